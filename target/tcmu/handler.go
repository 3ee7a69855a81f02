package tcmu

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/mdlayher/genetlink"
	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/target/scsi"
)

// Errors a Resolve function wraps so the kernel (and the configfs writer,
// e.g. targetcli) gets a fitting errno: ENOENT, ENOSPC and EBUSY.
var (
	ErrUnknownVolume  = errors.New("tcmu: no such volume")
	ErrVolumeTooSmall = errors.New("tcmu: device larger than the volume")
	ErrVolumeInUse    = errors.New("tcmu: volume already exported")
)

// ErrRunnerActive means tcmu-runner is running: it answers every TCM-USER
// netlink notification, refuses subtypes it does not know, and owns the
// D-Bus name, so it and this handler cannot serve at the same time.
var ErrRunnerActive = errors.New("tcmu: tcmu-runner is running")

// DisableDBus as Config.DBusAddress runs without the D-Bus service.
const DisableDBus = "none"

// Config configures a Handler.
type Config struct {
	// Logger receives device lifecycle events and errors; nil discards.
	Logger *slog.Logger
	// Resolve maps a device's cfgstring to what it serves, or says exactly
	// why not (unknown volume, size larger than the backing device, volume
	// already exported). Wrap ErrUnknownVolume, ErrVolumeTooSmall or
	// ErrVolumeInUse to choose the errno the configfs writer sees. The
	// kernel blocks the configfs writer until it returns, so it must be
	// quick; it may be called concurrently for different devices.
	// Required.
	Resolve func(cfgstring string, sizeBytes int64) (scsi.Volume, error)
	// Release, if set, is called once a device Resolve succeeded for has
	// stopped serving (removed, or the handler is shutting down) and no
	// command touches the volume any more.
	Release func(cfgstring string, v scsi.Volume)
	// Check, if set, validates a cfgstring for targetcli's CheckConfig
	// before the device exists; nil accepts every well-formed cfgstring.
	// It may be called from several goroutines at once.
	Check func(cfgstring string) error
	// Subtype is the handler name: targetcli shows user:<Subtype>. Default
	// "cachelun".
	Subtype string
	// ConfigDesc is the help targetcli shows for the cfgstring.
	ConfigDesc string
	// WriteCache is the initial WCE of each device's logical unit; the
	// device's configfs emulate_write_cache=1 also enables it, and a
	// live change of that attribute is applied.
	WriteCache bool
	// DeviceWriteCache, if set, gives the initial WCE of the device serving
	// cfgstring instead of WriteCache (per-volume settings). It is called
	// when a device starts and must be quick.
	DeviceWriteCache func(cfgstring string) bool
	// DeviceSanitizeRate, if set, gives the SANITIZE OVERWRITE rate limit
	// of the device serving cfgstring (scsi.LUConfig.SanitizeMaxBytesPerSec:
	// 0 the default, negative none). Called when a device starts; quick.
	DeviceSanitizeRate func(cfgstring string) int64
	// DBusAddress is the bus to publish org.kernel.TCMUService1 on: ""
	// means the system bus (skipped with a warning when there is none),
	// DisableDBus turns the service off.
	DBusAddress string
	// Ready, if set, is called once Run answers notifications: the
	// kernel handshake is done and existing devices are re-adopted.
	Ready func()
	// ShutdownGrace bounds how long commands in flight may run after Run's
	// context ends before they are aborted. Default 10s.
	ShutdownGrace time.Duration
}

// Handler is the TCMU front end: it answers the kernel's device
// notifications, publishes the D-Bus service and serves every device of its
// subtype through target/scsi.
type Handler struct {
	cfg Config
	log *slog.Logger

	// Filesystem roots, overridden by tests.
	configfs string // .../target/core
	sysUIO   string // /sys/class/uio
	devDir   string // /dev
	procDir  string // /proc
	// writeDevSize, when set, replaces the configfs write of
	// attrib/dev_size (GrowDevices); tests play the kernel with it.
	writeDevSize func(dir string, size int64) error

	mu      sync.Mutex
	devices map[uint32]*openDevice // by UIO minor
	closing bool

	running atomic.Bool
}

// New checks cfg and returns a Handler; nothing touches the kernel until Run.
func New(cfg Config) (*Handler, error) {
	if cfg.Resolve == nil {
		return nil, errors.New("tcmu: Config.Resolve is required")
	}
	if cfg.Subtype == "" {
		cfg.Subtype = "cachelun"
	}
	if strings.ContainsAny(cfg.Subtype, "/:") || strings.TrimSpace(cfg.Subtype) != cfg.Subtype {
		return nil, fmt.Errorf("tcmu: subtype %q must not contain '/', ':' or spaces", cfg.Subtype)
	}
	if cfg.ConfigDesc == "" {
		cfg.ConfigDesc = "cachelun volume name, e.g. cfgstring=db1"
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Handler{
		cfg:      cfg,
		log:      log,
		configfs: "/sys/kernel/config/target/core",
		sysUIO:   "/sys/class/uio",
		devDir:   "/dev",
		procDir:  "/proc",
		devices:  make(map[uint32]*openDevice),
	}, nil
}

// openDevice is a device this handler serves.
type openDevice struct {
	dev    *device
	port   uioPort
	vol    *sizedVolume
	cfg    string
	done   chan struct{} // closed when serve returned
	target *scsi.Target

	luMu sync.Mutex
	lu   *scsi.LU
	wce  bool
	dir  string // configfs directory
	// sanitizeRate is the LU's SANITIZE OVERWRITE rate limit
	// (Config.DeviceSanitizeRate).
	sanitizeRate int64
}

// Run serves until ctx ends: it refuses to start next to tcmu-runner,
// announces itself to the kernel, publishes the D-Bus service, re-adopts
// the devices of its subtype that already exist (after a restart), and
// answers device notifications. It returns after every goroutine it started
// has exited; devices stay configured in the kernel for the next start.
func (h *Handler) Run(ctx context.Context) error {
	if !h.running.CompareAndSwap(false, true) {
		return errors.New("tcmu: Run called twice")
	}
	if pid, ok := findProcess(h.procDir, "tcmu-runner"); ok {
		return fmt.Errorf("%w (pid %d): it answers every TCMU device notification and refuses user:%s devices; stop it first (systemctl stop tcmu-runner)",
			ErrRunnerActive, pid, h.cfg.Subtype)
	}
	// D-Bus first: SET_FEATURES makes the kernel wait for replies from
	// then on (module-wide), so it is sent only once nothing else can
	// stop the handler from answering.
	var bus *dbus.Conn
	if h.cfg.DBusAddress != DisableDBus {
		var err error
		if bus, err = h.startDBus(); err != nil {
			return err
		}
	}
	nl, replies, err := dialNetlink()
	if err != nil {
		if bus != nil {
			bus.Close()
		}
		return err
	}
	if !replies {
		h.log.Warn("tcmu: kernel did not accept SET_FEATURES (needs CAP_NET_ADMIN); it will not wait for our device verdicts")
	}

	h.adoptExisting()
	h.log.Info("tcmu: handler ready", "subtype", h.cfg.Subtype, "devices", h.deviceCount(), "dbus", bus != nil)
	if h.cfg.Ready != nil {
		h.cfg.Ready()
	}

	var events sync.WaitGroup
	stop := nl.unblockOn(ctx)
	for ctx.Err() == nil {
		msgs, err := nl.receive()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if overrun(err) {
				h.log.Error("tcmu: netlink socket overflowed; device notifications were lost and their configfs writers may hang (recover with block_netlink/reset_netlink)", "err", err)
				continue
			}
			if ignorable(err) {
				h.log.Debug("tcmu: kernel refused a reply (device without reply support, or answered already)", "err", err)
				continue
			}
			h.log.Error("tcmu: netlink receive failed; stopping", "err", err)
			break
		}
		for _, m := range msgs {
			events.Add(1)
			go func(m genetlink.Message) {
				defer events.Done()
				h.handleMessage(nl, m)
			}(m)
		}
	}
	stop()
	events.Wait()
	nl.close()
	if bus != nil {
		bus.Close()
	}
	h.closeAll()
	return nil
}

func (h *Handler) startDBus() (*dbus.Conn, error) {
	var (
		conn *dbus.Conn
		err  error
	)
	if h.cfg.DBusAddress == "" {
		conn, err = dbus.ConnectSystemBus()
		if err != nil {
			h.log.Warn("tcmu: no D-Bus system bus; targetcli will not list user:"+h.cfg.Subtype+" (devices created through configfs still work)", "err", err)
			return nil, nil
		}
	} else if conn, err = dbus.Connect(h.cfg.DBusAddress); err != nil {
		return nil, fmt.Errorf("tcmu: connect to D-Bus %s: %w", h.cfg.DBusAddress, err)
	}
	if err := exportDBus(conn, h.cfg.Subtype, h.cfg.ConfigDesc, h.cfg.Check); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (h *Handler) deviceCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.devices)
}

// handleMessage answers one notification. Every path ends in a reply: the
// kernel blocks the configfs writer until one arrives.
func (h *Handler) handleMessage(nl *nlConn, m genetlink.Message) {
	e, err := parseEvent(m)
	if err != nil {
		h.log.Error("tcmu: undecodable notification", "err", err)
	}
	if replyCommand(e.cmd) == 0 {
		return
	}
	status := h.handleEvent(e)
	if !e.hasDeviceID {
		return // the kernel expects no reply
	}
	if err := nl.reply(e, status); err != nil {
		h.log.Error("tcmu: sending reply failed; the configfs writer may hang (recover with block_netlink/reset_netlink)", "event", e.String(), "err", err)
	}
}

// handleEvent acts on one notification and returns the status for its
// reply: 0 or -errno.
func (h *Handler) handleEvent(e nlEvent) int32 {
	name, err := parseUIOName(e.uioName)
	if err != nil {
		h.log.Warn("tcmu: notification for an unknown device", "event", e.String(), "err", err)
		if e.cmd == nlRemovedDevice {
			return 0
		}
		return -int32(unix.EINVAL)
	}
	if name.subtype != h.cfg.Subtype {
		// Ours is the only daemon answering: leaving it unanswered would
		// hang the writer.
		if e.cmd == nlRemovedDevice {
			return 0
		}
		h.log.Warn("tcmu: refusing a device of another subtype", "event", e.String(), "subtype", name.subtype)
		return -int32(unix.ENOENT)
	}
	switch e.cmd {
	case nlAddedDevice:
		if err := h.open(name, e.minor, false); err != nil {
			h.log.Error("tcmu: refusing device", "device", name.String(), "err", err)
			return errnoStatus(err)
		}
		h.log.Info("tcmu: device added", "device", name.String(), "uio", e.minor)
		return 0
	case nlRemovedDevice:
		h.remove(e.minor)
		h.log.Info("tcmu: device removed", "device", name.String(), "uio", e.minor)
		return 0
	case nlReconfigDevice:
		if err := h.reconfigure(e); err != nil {
			h.log.Error("tcmu: refusing reconfiguration", "event", e.String(), "err", err)
			return errnoStatus(err)
		}
		h.log.Info("tcmu: device reconfigured", "event", e.String())
		return 0
	}
	return -int32(unix.EINVAL)
}

func errnoStatus(err error) int32 {
	var errno syscall.Errno
	switch {
	case errors.Is(err, ErrUnknownVolume), errors.Is(err, fs.ErrNotExist):
		return -int32(unix.ENOENT)
	case errors.Is(err, ErrVolumeTooSmall):
		return -int32(unix.ENOSPC)
	case errors.Is(err, ErrVolumeInUse):
		return -int32(unix.EBUSY)
	case errors.As(err, &errno) && errno != 0:
		return -int32(errno)
	}
	return -int32(unix.EINVAL)
}

// open starts serving a device. With reopen (re-adoption after a restart)
// the kernel is told to hold new commands and to fail the ones the previous
// owner left in the ring with BUSY, so initiators retry them against us.
func (h *Handler) open(name uioName, minor uint32, reopen bool) (err error) {
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return fmt.Errorf("tcmu: handler is shutting down: %w", unix.EAGAIN)
	}
	if _, ok := h.devices[minor]; ok {
		h.mu.Unlock()
		return nil // adopted at start-up and announced again
	}
	h.mu.Unlock()

	if err := validateCfgstring(name.cfg); err != nil {
		return fmt.Errorf("%w: %v", ErrUnknownVolume, err)
	}
	dir := filepath.Join(h.configfs, name.configDir())
	size, err := readUint(filepath.Join(dir, "attrib", "dev_size"))
	if err != nil {
		return fmt.Errorf("tcmu: device size: %w", err)
	}
	if size == 0 {
		return fmt.Errorf("tcmu: dev_size is 0 (write dev_size=<bytes> to control before enable): %w", unix.EINVAL)
	}
	vol, err := h.cfg.Resolve(name.cfg, int64(size))
	if err != nil {
		return fmt.Errorf("cfgstring %q: %w", name.cfg, err)
	}
	release := func() {
		if h.cfg.Release != nil {
			h.cfg.Release(name.cfg, vol)
		}
	}
	sv, err := newSizedVolume(vol, int64(size))
	if err != nil {
		release()
		return fmt.Errorf("cfgstring %q: %w", name.cfg, err)
	}

	if reopen {
		if err := writeAction(dir, "block_dev", "1"); err != nil {
			h.log.Warn("tcmu: cannot block device during re-adoption", "device", name.String(), "err", err)
		}
		defer func() {
			if err := writeAction(dir, "block_dev", "0"); err != nil {
				h.log.Warn("tcmu: cannot unblock device after re-adoption", "device", name.String(), "err", err)
			}
		}()
		if err := writeAction(dir, "reset_ring", "1"); err != nil {
			release()
			return fmt.Errorf("tcmu: reset the ring of %s: %w", name, err)
		}
	}

	u, err := openUIO(h.devDir, h.sysUIO, minor)
	if err != nil {
		release()
		return err
	}
	if err := h.startDevice(name, minor, dir, sv, u, u.mm, release); err != nil {
		u.close()
		release()
		return err
	}
	return nil
}

// startDevice registers a mapped device and starts serving its ring.
func (h *Handler) startDevice(name uioName, minor uint32, dir string, sv *sizedVolume, port uioPort, mm []byte, release func()) error {
	od := &openDevice{vol: sv, cfg: name.cfg, port: port, done: make(chan struct{}), dir: dir}
	od.wce = h.cfg.WriteCache
	if h.cfg.DeviceSanitizeRate != nil {
		od.sanitizeRate = h.cfg.DeviceSanitizeRate(name.cfg)
	}
	if h.cfg.DeviceWriteCache != nil {
		od.wce = h.cfg.DeviceWriteCache(name.cfg)
	}
	if v, err := readUint(filepath.Join(dir, "attrib", "emulate_write_cache")); err == nil && v == 1 {
		od.wce = true
	}
	od.target = scsi.NewTarget(scsi.TargetConfig{Name: "tcmu:" + name.configDir(), Logger: h.log})
	dev, err := newDevice(name, minor, port, mm, od.executor, h.log)
	if err != nil {
		return err
	}
	dev.grace = h.cfg.ShutdownGrace
	od.dev = dev

	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return fmt.Errorf("tcmu: handler is shutting down: %w", unix.EAGAIN)
	}
	h.devices[minor] = od
	h.mu.Unlock()
	go func() {
		defer close(od.done)
		dev.serve()
		if err := od.target.RemoveLU(0); err != nil && !errors.Is(err, scsi.ErrNoSuchLUN) {
			h.log.Debug("tcmu: remove logical unit", "err", err)
		}
		flushCtx, cancel := context.WithTimeout(context.Background(), h.cfg.ShutdownGrace)
		if err := sv.Flush(flushCtx); err != nil {
			h.log.Warn("tcmu: flush on device close failed", "device", name.String(), "err", err)
		}
		cancel()
		if err := port.close(); err != nil {
			h.log.Warn("tcmu: unmap device", "device", name.String(), "err", err)
		}
		release()
	}()
	return nil
}

// executor returns the device's logical unit, creating it on first use:
// targetcli writes the unit serial (wwn/vpd_unit_serial) only after the
// device was enabled, so it is read when the first command arrives.
func (od *openDevice) executor() (executor, error) {
	od.luMu.Lock()
	defer od.luMu.Unlock()
	if od.lu == nil {
		if _, err := od.addLU(); err != nil {
			return nil, err
		}
	}
	return od.target, nil
}

func (od *openDevice) addLU() (*scsi.LU, error) {
	id := scsi.TCMUIdentity(readSerial(od.dir), od.cfg)
	lu, err := od.target.AddLU(0, scsi.LUConfig{
		Volume:       od.vol,
		SerialNumber: id.Serial,
		DeviceID:     id.DeviceID,
		WriteCache:   od.wce,

		SanitizeMaxBytesPerSec: od.sanitizeRate,
	})
	if err != nil {
		return nil, err
	}
	od.lu = lu
	return lu, nil
}

// readSerial returns the unit serial LIO shows in wwn/vpd_unit_serial
// ("T10 VPD Unit Serial Number: <serial>"), or "".
func readSerial(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "wwn", "vpd_unit_serial"))
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndex(s, ":"); i >= 0 {
		s = strings.TrimSpace(s[i+1:])
	}
	return s
}

// remove stops serving a device and waits until its mapping is gone.
func (h *Handler) remove(minor uint32) {
	h.mu.Lock()
	od := h.devices[minor]
	delete(h.devices, minor)
	h.mu.Unlock()
	if od == nil {
		return
	}
	od.port.stop()
	<-od.done
}

// reconfigure applies a live change of dev_size or emulate_write_cache.
// Changing dev_config would point the device at another volume under the
// initiators' feet and is refused.
func (h *Handler) reconfigure(e nlEvent) error {
	h.mu.Lock()
	od := h.devices[e.minor]
	h.mu.Unlock()
	if od == nil {
		return fmt.Errorf("tcmu: reconfiguration of a device this handler does not serve: %w", unix.ENODEV)
	}
	switch {
	case e.hasDevCfg:
		_, cfg, err := splitDevConfig(e.devCfg)
		if err != nil || cfg != od.cfg {
			return fmt.Errorf("tcmu: changing dev_config of a live device is not supported (remove and re-create it): %w", unix.EOPNOTSUPP)
		}
		return nil
	case e.hasDevSize:
		if err := od.vol.resize(int64(e.devSize)); err != nil {
			return err
		}
		od.luMu.Lock()
		if od.lu != nil {
			od.lu.NotifyCapacityChanged()
		}
		od.luMu.Unlock()
		return nil
	case e.hasWriteCache:
		ctx, cancel := context.WithTimeout(context.Background(), h.cfg.ShutdownGrace)
		defer cancel()
		return od.setWriteCache(ctx, e.writeCache)
	}
	return nil
}

// setWriteCache changes the configured WCE of the device's logical unit
// live (scsi.LU.SetConfiguredWriteCache: turning it off flushes the volume
// first, hosts get MODE PARAMETERS CHANGED). A unit not created yet starts
// with it.
func (od *openDevice) setWriteCache(ctx context.Context, on bool) error {
	od.luMu.Lock()
	defer od.luMu.Unlock()
	od.wce = on
	if od.lu == nil {
		return nil
	}
	_, err := od.lu.SetConfiguredWriteCache(ctx, on)
	return err
}

// SetConfiguredWriteCache applies a new configured WCE to every device
// serving cfgstring (see scsi.LU.SetConfiguredWriteCache); devices started
// later get Config.DeviceWriteCache. It reports how many devices it
// reached.
func (h *Handler) SetConfiguredWriteCache(ctx context.Context, cfgstring string, on bool) (int, error) {
	h.mu.Lock()
	var devs []*openDevice
	for _, od := range h.devices {
		if od.cfg == cfgstring {
			devs = append(devs, od)
		}
	}
	h.mu.Unlock()
	var errs []error
	for _, od := range devs {
		if err := od.setWriteCache(ctx, on); err != nil {
			errs = append(errs, fmt.Errorf("tcmu: device %s: %w", od.dev.name.configDir(), err))
		}
	}
	return len(devs), errors.Join(errs...)
}

// DeviceInfo describes a device the handler serves.
type DeviceInfo struct {
	// ConfigDir is the device's configfs directory below
	// target/core, e.g. "user_0/db1".
	ConfigDir string
	// Cfgstring is what the device serves (as given to Resolve).
	Cfgstring string
	// UIO is the minor of /dev/uio<N>.
	UIO uint32
	// SizeBytes is the capacity the device shows (dev_size).
	SizeBytes int64
	// Commands counts commands completed since the device was opened.
	Commands uint64
	// InFlight counts commands being executed now.
	InFlight int
}

// Devices lists the devices being served, ordered by UIO minor.
func (h *Handler) Devices() []DeviceInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]DeviceInfo, 0, len(h.devices))
	for minor, od := range h.devices {
		out = append(out, DeviceInfo{
			ConfigDir: od.dev.name.configDir(),
			Cfgstring: od.cfg,
			UIO:       minor,
			SizeBytes: od.vol.Size(),
			Commands:  od.dev.served.Load(),
			InFlight:  od.dev.ring.inFlight(),
		})
	}
	slices.SortFunc(out, func(a, b DeviceInfo) int { return cmp.Compare(a.UIO, b.UIO) })
	return out
}

// closeAll stops every device at shutdown. The devices stay in the kernel;
// the next start re-adopts them.
func (h *Handler) closeAll() {
	h.mu.Lock()
	h.closing = true
	devs := make([]*openDevice, 0, len(h.devices))
	for m, od := range h.devices {
		devs = append(devs, od)
		delete(h.devices, m)
	}
	h.mu.Unlock()
	for _, od := range devs {
		od.port.stop()
	}
	for _, od := range devs {
		<-od.done
	}
}

// adoptExisting serves the devices of our subtype that exist already: the
// daemon restarted while LIO kept them.
func (h *Handler) adoptExisting() {
	entries, err := os.ReadDir(h.sysUIO)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			h.log.Warn("tcmu: cannot list UIO devices", "err", err)
		}
		return
	}
	for _, ent := range entries {
		var minor uint32
		if _, err := fmt.Sscanf(ent.Name(), "uio%d", &minor); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(h.sysUIO, ent.Name(), "name"))
		if err != nil {
			continue
		}
		name, err := parseUIOName(strings.TrimSpace(string(b)))
		if err != nil || name.subtype != h.cfg.Subtype {
			continue
		}
		if err := h.open(name, minor, true); err != nil {
			h.log.Error("tcmu: cannot re-adopt device; its commands will time out", "device", name.String(), "uio", minor, "err", err)
			continue
		}
		h.log.Info("tcmu: device re-adopted", "device", name.String(), "uio", minor)
	}
}

func writeAction(dir, action, value string) error {
	return os.WriteFile(filepath.Join(dir, "action", action), []byte(value), 0)
}

// findProcess looks for a running process whose command name is comm.
func findProcess(procDir, comm string) (int, bool) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return 0, false
	}
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procDir, e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(b)) == comm {
			return pid, true
		}
	}
	return 0, false
}

// sizedVolume presents exactly the size configured in LIO (dev_size) of a
// volume that may be larger, and follows live resizes.
type sizedVolume struct {
	scsi.Volume
	size atomic.Int64
}

func newSizedVolume(v scsi.Volume, size int64) (*sizedVolume, error) {
	s := &sizedVolume{Volume: v}
	if err := s.resize(size); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *sizedVolume) resize(size int64) error {
	bs := int64(s.Volume.BlockSize())
	if bs <= 0 {
		return fmt.Errorf("tcmu: volume reports block size %d", bs)
	}
	if size <= 0 || size > s.Volume.Size() {
		return fmt.Errorf("%w: dev_size %d, volume holds %d bytes", ErrVolumeTooSmall, size, s.Volume.Size())
	}
	s.size.Store(size - size%bs)
	return nil
}

func (s *sizedVolume) Size() int64 { return s.size.Load() }
