package tcmu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Generic netlink family TCM-USER (include/uapi/linux/target_core_user.h).
const (
	familyName  = "TCM-USER"
	configGroup = "config"

	nlAddedDevice        = 1
	nlRemovedDevice      = 2
	nlReconfigDevice     = 3
	nlAddedDeviceDone    = 4
	nlRemovedDeviceDone  = 5
	nlReconfigDeviceDone = 6
	nlSetFeatures        = 7

	attrDevice           = 1 // string: uio name tcm-user/<hba>/<so>/<subtype>/<cfg>
	attrMinor            = 2 // u32: /dev/uio<minor>
	attrPad              = 3
	attrDevCfg           = 4 // string: new dev_config (RECONFIG)
	attrDevSize          = 5 // u64: new dev_size (RECONFIG)
	attrWriteCache       = 6 // u8: new emulate_write_cache (RECONFIG)
	attrCmdStatus        = 7 // s32: our answer, 0 or -errno
	attrDeviceID         = 8 // u32: se_dev index the kernel matches replies by
	attrSuppKernCmdReply = 9 // u8: SET_FEATURES: we send *_DONE replies
)

// nlEvent is a decoded kernel notification about one device.
type nlEvent struct {
	cmd      uint8
	version  uint8
	uioName  string
	minor    uint32
	deviceID uint32
	// hasDeviceID is false on kernels that expect no reply.
	hasDeviceID bool

	devCfg        string
	hasDevCfg     bool
	devSize       uint64
	hasDevSize    bool
	writeCache    bool
	hasWriteCache bool
}

func (e nlEvent) String() string {
	s := fmt.Sprintf("%s device=%q minor=%d", nlCommandName(e.cmd), e.uioName, e.minor)
	if e.hasDeviceID {
		s += fmt.Sprintf(" id=%d", e.deviceID)
	}
	if e.hasDevCfg {
		s += fmt.Sprintf(" dev_config=%q", e.devCfg)
	}
	if e.hasDevSize {
		s += fmt.Sprintf(" dev_size=%d", e.devSize)
	}
	if e.hasWriteCache {
		s += fmt.Sprintf(" write_cache=%t", e.writeCache)
	}
	return s
}

func nlCommandName(c uint8) string {
	switch c {
	case nlAddedDevice:
		return "ADDED_DEVICE"
	case nlRemovedDevice:
		return "REMOVED_DEVICE"
	case nlReconfigDevice:
		return "RECONFIG_DEVICE"
	case nlAddedDeviceDone:
		return "ADDED_DEVICE_DONE"
	case nlRemovedDeviceDone:
		return "REMOVED_DEVICE_DONE"
	case nlReconfigDeviceDone:
		return "RECONFIG_DEVICE_DONE"
	case nlSetFeatures:
		return "SET_FEATURES"
	}
	return fmt.Sprintf("command %d", c)
}

// replyCommand is the *_DONE command that answers cmd, or 0 if cmd is not a
// device notification.
func replyCommand(cmd uint8) uint8 {
	switch cmd {
	case nlAddedDevice:
		return nlAddedDeviceDone
	case nlRemovedDevice:
		return nlRemovedDeviceDone
	case nlReconfigDevice:
		return nlReconfigDeviceDone
	}
	return 0
}

// parseEvent decodes a TCM-USER notification.
func parseEvent(m genetlink.Message) (nlEvent, error) {
	e := nlEvent{cmd: m.Header.Command, version: m.Header.Version}
	ad, err := netlink.NewAttributeDecoder(m.Data)
	if err != nil {
		return e, fmt.Errorf("tcmu: decode %s attributes: %w", nlCommandName(e.cmd), err)
	}
	for ad.Next() {
		switch ad.Type() {
		case attrDevice:
			e.uioName = ad.String()
		case attrMinor:
			e.minor = ad.Uint32()
		case attrDeviceID:
			e.deviceID, e.hasDeviceID = ad.Uint32(), true
		case attrDevCfg:
			e.devCfg, e.hasDevCfg = ad.String(), true
		case attrDevSize:
			e.devSize, e.hasDevSize = ad.Uint64(), true
		case attrWriteCache:
			e.writeCache, e.hasWriteCache = ad.Uint8() != 0, true
		}
	}
	if err := ad.Err(); err != nil {
		return e, fmt.Errorf("tcmu: decode %s attributes: %w", nlCommandName(e.cmd), err)
	}
	return e, nil
}

// replyMessage builds the *_DONE answer to e with status 0 or -errno.
func replyMessage(e nlEvent, status int32, version uint8) (genetlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Int32(attrCmdStatus, status)
	ae.Uint32(attrDeviceID, e.deviceID)
	b, err := ae.Encode()
	if err != nil {
		return genetlink.Message{}, err
	}
	return genetlink.Message{
		Header: genetlink.Header{Command: replyCommand(e.cmd), Version: version},
		Data:   b,
	}, nil
}

// setFeaturesMessage tells the kernel that this daemon answers every device
// notification, so configfs writers wait for (and report) our verdict.
func setFeaturesMessage(version uint8) (genetlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(attrSuppKernCmdReply, 1)
	b, err := ae.Encode()
	if err != nil {
		return genetlink.Message{}, err
	}
	return genetlink.Message{Header: genetlink.Header{Command: nlSetFeatures, Version: version}, Data: b}, nil
}

// nlConn is the daemon's TCM-USER socket.
type nlConn struct {
	c       *genetlink.Conn
	family  uint16
	version uint8
}

// dialNetlink opens the TCM-USER family, announces reply support and joins
// the "config" multicast group. The kernel module target_core_user must be
// loaded.
func dialNetlink() (*nlConn, bool, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, false, fmt.Errorf("tcmu: open generic netlink socket: %w", err)
	}
	fam, err := c.GetFamily(familyName)
	if errors.Is(err, os.ErrNotExist) {
		// The family appears when target_core_user is loaded; load it as
		// tcmu-runner does, then look again.
		if out, merr := exec.Command("modprobe", "target_core_user").CombinedOutput(); merr == nil {
			fam, err = c.GetFamily(familyName)
		} else {
			err = fmt.Errorf("%w (modprobe target_core_user: %v: %s)", err, merr, strings.TrimSpace(string(out)))
		}
	}
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, fmt.Errorf("tcmu: generic netlink family %s not found (modprobe target_core_user): %w", familyName, err)
		}
		return nil, false, fmt.Errorf("tcmu: look up generic netlink family %s: %w", familyName, err)
	}
	n := &nlConn{c: c, family: fam.ID, version: fam.Version}
	// Notifications are rare, but a burst (targetcli restoreconfig) must
	// not overflow the socket: a lost ADDED_DEVICE leaves a writer hanging.
	_ = c.SetReadBuffer(1 << 20)
	replies := false
	if fam.Version >= 2 {
		m, err := setFeaturesMessage(fam.Version)
		if err == nil {
			_, err = c.Execute(m, fam.ID, netlink.Request|netlink.Acknowledge)
		}
		// Without CAP_NET_ADMIN, or on kernels without the command, the
		// kernel does not wait for replies; we still serve devices.
		replies = err == nil
	}
	var group uint32
	for _, g := range fam.Groups {
		if g.Name == configGroup {
			group = g.ID
		}
	}
	if group == 0 {
		c.Close()
		return nil, false, fmt.Errorf("tcmu: netlink family %s has no %q multicast group", familyName, configGroup)
	}
	if err := c.JoinGroup(group); err != nil {
		c.Close()
		return nil, false, fmt.Errorf("tcmu: join netlink group %q: %w", configGroup, err)
	}
	return n, replies, nil
}

// receive returns the next batch of notifications. Error messages the
// kernel sends back for a *_DONE it cannot match (a device created with
// nl_reply_supported=-1, or answered already) are reported as ignorable.
func (n *nlConn) receive() ([]genetlink.Message, error) {
	msgs, _, err := n.c.Receive()
	return msgs, err
}

// ignorable reports whether a receive error is an NLMSG_ERROR answer to one
// of our replies rather than a broken socket.
func ignorable(err error) bool {
	var oe *netlink.OpError
	if !errors.As(err, &oe) {
		return false
	}
	if oe.Timeout() {
		return false
	}
	return errors.Is(oe.Err, unix.ENODEV) || errors.Is(oe.Err, unix.EINVAL) ||
		errors.Is(oe.Err, unix.ENOENT) || errors.Is(oe.Err, unix.EBUSY)
}

// overrun reports a receive error that means notifications were dropped
// because the socket buffer was full.
func overrun(err error) bool { return errors.Is(err, unix.ENOBUFS) }

func (n *nlConn) reply(e nlEvent, status int32) error {
	m, err := replyMessage(e, status, n.version)
	if err != nil {
		return err
	}
	_, err = n.c.Send(m, n.family, netlink.Request)
	return err
}

// unblockOn makes a pending receive return once ctx ends.
func (n *nlConn) unblockOn(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() { _ = n.c.SetReadDeadline(time.Now()) })
}

func (n *nlConn) close() error { return n.c.Close() }
