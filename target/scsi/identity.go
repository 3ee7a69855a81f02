package scsi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
)

// Identity is a logical unit's name as hosts see it: the unit serial number
// (VPD 80h) and the 16-byte device id the VPD 83h designators are built
// from (NAA-6 and T10 vendor ID, see NAA and T10VendorID).
//
// Hosts name disks by these values: multipath merges paths with the same
// NAA, udev builds /dev/disk/by-id from them, ESXi keys datastores on them.
// A change to any derivation below renames every LUN on every host, so
// identity_test.go pins today's values (testdata/identity.golden).
type Identity struct {
	Serial   string
	DeviceID [16]byte
}

// LUNIdentity is the identity of an iSCSI LUN that target iqn maps to
// volume. It depends on the target name and the volume name only (not on
// the LUN number, not on the data directory), so a LUN keeps its identity
// across restarts and when it moves to another LUN number of its target.
// The IQN is used as configured (case included).
func LUNIdentity(iqn, volume string) Identity {
	id := digest("cachelun-lun\x00" + iqn + "\x00" + volume)
	return Identity{Serial: hex.EncodeToString(id[:8]), DeviceID: id}
}

// TCMUIdentity is the identity of a TCMU device. serial is the unit serial
// LIO shows for it (wwn/vpd_unit_serial, set by targetcli); when LIO has
// none the serial derives from the device's cfgstring. The device id
// derives from the serial, so hosts that see the same device through LIO
// and cachelun see one identity.
func TCMUIdentity(serial, cfgstring string) Identity {
	if serial == "" {
		sum := sha256.Sum256([]byte("cachelun-tcmu-serial\x00" + cfgstring))
		serial = fmt.Sprintf("%x", sum[:8])
	}
	return Identity{Serial: serial, DeviceID: digest("cachelun-tcmu-id\x00" + serial)}
}

// defaultIdentity is the identity of a logical unit configured without one:
// derived from the target name and LUN so that two logical units never
// share a VPD 83h identity (multipath would merge them).
func defaultIdentity(target string, lun uint64) Identity {
	id := digest(target + "\x00" + strconv.FormatUint(lun, 10))
	return Identity{Serial: fmt.Sprintf("%x", id[:8]), DeviceID: id}
}

// NAA is the NAA IEEE Registered Extended (NAA 6) designator of VPD 83h:
// the device id with its top nibble replaced by 6 (124 bits of the id).
func (id Identity) NAA() [16]byte {
	naa := id.DeviceID
	naa[0] = 0x60 | naa[0]&0x0f
	return naa
}

// T10VendorID is the T10 vendor ID based designator of VPD 83h: the vendor
// identification padded to 8 bytes, then the device id in lower-case hex.
func (id Identity) T10VendorID(vendor string) []byte {
	t10 := make([]byte, 8, 8+32)
	padCopy(t10, vendor)
	return fmt.Appendf(t10, "%x", id.DeviceID)
}

func digest(s string) [16]byte {
	sum := sha256.Sum256([]byte(s))
	var id [16]byte
	copy(id[:], sum[:])
	return id
}
