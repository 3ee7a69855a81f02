package tcmu

import (
	"testing"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func encodeAttrs(t testing.TB, f func(ae *netlink.AttributeEncoder)) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	f(ae)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseAddedDevice(t *testing.T) {
	m := genetlink.Message{
		Header: genetlink.Header{Command: nlAddedDevice, Version: 2},
		Data: encodeAttrs(t, func(ae *netlink.AttributeEncoder) {
			ae.String(attrDevice, "tcm-user/0/vol1/cachelun/db1")
			ae.Uint32(attrMinor, 3)
			ae.Uint32(attrDeviceID, 42)
		}),
	}
	e, err := parseEvent(m)
	if err != nil {
		t.Fatal(err)
	}
	if e.cmd != nlAddedDevice || e.version != 2 || e.uioName != "tcm-user/0/vol1/cachelun/db1" || e.minor != 3 ||
		!e.hasDeviceID || e.deviceID != 42 || e.hasDevCfg || e.hasDevSize || e.hasWriteCache {
		t.Fatalf("parsed %+v", e)
	}
}

func TestParseReconfigDevice(t *testing.T) {
	m := genetlink.Message{
		Header: genetlink.Header{Command: nlReconfigDevice, Version: 2},
		Data: encodeAttrs(t, func(ae *netlink.AttributeEncoder) {
			ae.String(attrDevice, "tcm-user/1/x/cachelun/v")
			ae.Uint32(attrMinor, 0)
			ae.Uint64(attrDevSize, 1<<33)
			ae.Uint8(attrWriteCache, 1)
			ae.String(attrDevCfg, "cachelun/v2")
			ae.Uint32(attrDeviceID, 7)
		}),
	}
	e, err := parseEvent(m)
	if err != nil {
		t.Fatal(err)
	}
	if !e.hasDevSize || e.devSize != 1<<33 || !e.hasWriteCache || !e.writeCache || !e.hasDevCfg || e.devCfg != "cachelun/v2" || e.deviceID != 7 {
		t.Fatalf("parsed %+v", e)
	}
	if s := e.String(); s == "" {
		t.Fatal("empty String")
	}
}

func TestParseEventRejectsTruncatedAttributes(t *testing.T) {
	m := genetlink.Message{Header: genetlink.Header{Command: nlAddedDevice}, Data: []byte{8, 0, 2, 0, 1}}
	if _, err := parseEvent(m); err == nil {
		t.Fatal("truncated attributes accepted")
	}
	// A u32 attribute of the wrong size must be an error, not a panic.
	m.Data = encodeAttrs(t, func(ae *netlink.AttributeEncoder) { ae.Uint16(attrMinor, 1) })
	if _, err := parseEvent(m); err == nil {
		t.Fatal("2-byte MINOR accepted")
	}
}

func TestReplyMessage(t *testing.T) {
	for _, tc := range []struct {
		cmd, want uint8
	}{
		{nlAddedDevice, nlAddedDeviceDone},
		{nlRemovedDevice, nlRemovedDeviceDone},
		{nlReconfigDevice, nlReconfigDeviceDone},
	} {
		m, err := replyMessage(nlEvent{cmd: tc.cmd, deviceID: 99}, -int32(unix.ENOENT), 2)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Command != tc.want || m.Header.Version != 2 {
			t.Fatalf("reply header %+v, want command %d", m.Header, tc.want)
		}
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		var status int32
		var id uint32
		var seen int
		for ad.Next() {
			switch ad.Type() {
			case attrCmdStatus:
				status = ad.Int32()
				seen++
			case attrDeviceID:
				id = ad.Uint32()
				seen++
			default:
				t.Fatalf("unexpected attribute %d", ad.Type())
			}
		}
		if err := ad.Err(); err != nil || seen != 2 || status != -int32(unix.ENOENT) || id != 99 {
			t.Fatalf("reply status %d id %d seen %d err %v", status, id, seen, err)
		}
	}
	if replyCommand(nlSetFeatures) != 0 || replyCommand(nlAddedDeviceDone) != 0 {
		t.Fatal("reply command for a non-notification")
	}
}

func TestSetFeaturesMessage(t *testing.T) {
	m, err := setFeaturesMessage(2)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Command != nlSetFeatures {
		t.Fatalf("command %d", m.Header.Command)
	}
	// Byte layout: one 5-byte attribute (len 5, type 9, value 1) padded to 8.
	want := []byte{5, 0, attrSuppKernCmdReply, 0, 1, 0, 0, 0}
	if string(m.Data) != string(want) {
		t.Fatalf("SET_FEATURES attributes % x, want % x", m.Data, want)
	}
}

func FuzzParseEvent(f *testing.F) {
	f.Add(uint8(nlAddedDevice), encodeAttrs(f, func(ae *netlink.AttributeEncoder) {
		ae.String(attrDevice, "tcm-user/0/a/cachelun/b")
		ae.Uint32(attrMinor, 1)
		ae.Uint32(attrDeviceID, 2)
	}))
	f.Add(uint8(nlReconfigDevice), encodeAttrs(f, func(ae *netlink.AttributeEncoder) {
		ae.Uint64(attrDevSize, 4096)
		ae.Uint8(attrWriteCache, 0)
	}))
	f.Fuzz(func(t *testing.T, cmd uint8, data []byte) {
		e, err := parseEvent(genetlink.Message{Header: genetlink.Header{Command: cmd, Version: 2}, Data: data})
		if err != nil {
			return
		}
		_ = e.String()
		if _, err := parseUIOName(e.uioName); err == nil && e.uioName == "" {
			t.Fatal("empty name parsed")
		}
	})
}
