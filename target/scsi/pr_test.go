package scsi

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/cachelun/cachelun/internal/testkit"
)

func prout(sa, typ byte, key, saKey uint64, flags byte) ([]byte, []byte) {
	c := []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0}
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p[0:8], key)
	binary.BigEndian.PutUint64(p[8:16], saKey)
	p[20] = flags
	return c, p
}

func (f *fixture) prout(n *Nexus, sa, typ byte, key, saKey uint64, flags byte) Response {
	c, p := prout(sa, typ, key, saKey, flags)
	return f.exec(n, c, p, 0)
}

func (f *fixture) prin(n *Nexus, sa byte) Response {
	f.t.Helper()
	r := f.exec(n, []byte{0x5e, sa, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil, 4096)
	f.good(r)
	return r
}

func readKeys(f *fixture, n *Nexus) (gen uint32, keys []uint64) {
	r := f.prin(n, 0)
	gen = binary.BigEndian.Uint32(r.Data[0:4])
	l := binary.BigEndian.Uint32(r.Data[4:8])
	for i := uint32(0); i < l; i += 8 {
		keys = append(keys, binary.BigEndian.Uint64(r.Data[8+i:]))
	}
	return gen, keys
}

func (f *fixture) conflict(r Response) {
	f.t.Helper()
	if r.Status != StatusReservationConflict {
		f.t.Fatalf("status %#x, want RESERVATION CONFLICT", r.Status)
	}
}

func TestPRRegisterAndReadKeys(t *testing.T) {
	f := newFixture(t, nil)
	f.good(f.prout(nexusA, 0, 0, 0, 0xaa, 0))
	f.good(f.prout(nexusB, 6, 0, 0, 0xbb, 0))
	gen, keys := readKeys(f, nexusA)
	if gen != 2 || len(keys) != 2 || keys[0] != 0xaa || keys[1] != 0xbb {
		t.Fatalf("gen %d keys %x", gen, keys)
	}
	// Wrong key on REGISTER: conflict. Right key: replace.
	f.conflict(f.prout(nexusA, 0, 0, 0x11, 0xcc, 0))
	f.good(f.prout(nexusA, 0, 0, 0xaa, 0xcc, 0))
	// Unregistered REGISTER with a non-zero key conflicts.
	nx := &Nexus{InitiatorPort: "x,i,0x1", TargetPort: "t"}
	f.clearUA(nx)
	f.conflict(f.prout(nx, 0, 0, 0x5, 0x6, 0))
	// Unregister.
	f.good(f.prout(nexusA, 0, 0, 0xcc, 0, 0))
	_, keys = readKeys(f, nexusA)
	if len(keys) != 1 || keys[0] != 0xbb {
		t.Fatalf("keys after unregister %x", keys)
	}
	// Parameter list must be 24 bytes.
	c, p := prout(0, 0, 0, 1, 0)
	c[8] = 20
	f.sense(f.exec(nexusA, c, p[:20], 0), SenseIllegalRequest, ASCParameterListLengthError)
	// SPEC_I_PT is not supported; APTPL needs a state file.
	f.sense(f.prout(nexusA, 0, 0, 0, 1, 0x08), SenseIllegalRequest, ASCInvalidFieldInParameterList)
	f.sense(f.prout(nexusA, 0, 0, 0, 1, 0x01), SenseIllegalRequest, ASCInvalidFieldInParameterList)
}

func TestPRReservationAccess(t *testing.T) {
	read := testkit.CDB10(0x28, 0, 0, 1)
	write := testkit.CDB10(0x2a, 0, 0, 1)
	data := pattern(testBS, 1)
	nexusC := &Nexus{InitiatorPort: "iqn.test:c,i,0x3", TargetPort: "iqn.test:tgt,t,0x0001"}
	cases := []struct {
		typ                            byte
		regRead, regWrite, unRead, unW bool
	}{
		{prWriteExclusive, true, false, true, false},
		{prExclusiveAccess, false, false, false, false},
		{prWriteExclusiveRegOnly, true, true, true, false},
		{prExclusiveAccessRegOnly, true, true, false, false},
		{prWriteExclusiveAllReg, true, true, true, false},
		{prExclusiveAccessAllReg, true, true, false, false},
	}
	for _, c := range cases {
		t.Run(string(rune('0'+c.typ)), func(t *testing.T) {
			f := newFixture(t, nil)
			f.clearUA(nexusC)
			f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0))
			f.good(f.prout(nexusB, 0, 0, 0, 0xb, 0))
			f.good(f.prout(nexusA, 1, c.typ, 0xa, 0, 0))
			// Re-reserving with the same type is fine for a holder (every
			// registrant for the all-registrants types); others conflict.
			f.good(f.prout(nexusA, 1, c.typ, 0xa, 0, 0))
			if allRegistrants(c.typ) {
				f.good(f.prout(nexusB, 1, c.typ, 0xb, 0, 0))
			} else {
				f.conflict(f.prout(nexusB, 1, c.typ, 0xb, 0, 0))
			}
			otherType := byte(prWriteExclusive)
			if c.typ == otherType {
				otherType = prExclusiveAccess
			}
			f.conflict(f.prout(nexusA, 1, otherType, 0xa, 0, 0))
			f.good(f.exec(nexusA, read, nil, testBS))
			f.good(f.exec(nexusA, write, data, 0))
			check := func(n *Nexus, cdb, out []byte, allowed bool) {
				t.Helper()
				r := f.exec(n, cdb, out, testBS)
				if allowed && r.Status != StatusGood || !allowed && r.Status != StatusReservationConflict {
					t.Fatalf("%s %x: status %#x, allowed=%v", n.InitiatorPort, cdb[0], r.Status, allowed)
				}
			}
			check(nexusB, read, nil, c.regRead)
			check(nexusB, write, data, c.regWrite)
			check(nexusC, read, nil, c.unRead)
			check(nexusC, write, data, c.unW)
			// INQUIRY, TUR, READ CAPACITY and PR IN always work.
			check(nexusC, []byte{0x12, 0, 0, 0, 36, 0}, nil, true)
			check(nexusC, []byte{0, 0, 0, 0, 0, 0}, nil, true)
			check(nexusC, testkit.CDB10(0x25, 0, 0, 0), nil, true)
			r := f.prin(nexusC, 1)
			if binary.BigEndian.Uint32(r.Data[4:8]) != 16 || r.Data[21] != c.typ {
				t.Fatalf("READ RESERVATION % x", r.Data)
			}
			wantKey := uint64(0xa)
			if allRegistrants(c.typ) {
				wantKey = 0
			}
			if binary.BigEndian.Uint64(r.Data[8:16]) != wantKey {
				t.Fatalf("reservation key %x", r.Data[8:16])
			}
			// Release with the wrong type is an error; then release.
			other := byte(prWriteExclusive)
			if c.typ == other {
				other = prExclusiveAccess
			}
			f.sense(f.prout(nexusA, 2, other, 0xa, 0, 0), SenseIllegalRequest, ASCInvalidReleaseOfPR)
			f.good(f.prout(nexusA, 2, c.typ, 0xa, 0, 0))
			check(nexusC, write, data, true)
		})
	}
}

func TestPRPreemptAndClear(t *testing.T) {
	f := newFixture(t, nil)
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0))
	f.good(f.prout(nexusB, 0, 0, 0, 0xb, 0))
	f.good(f.prout(nexusA, 1, prExclusiveAccess, 0xa, 0, 0))
	// B preempts A: A loses its registration and the reservation.
	f.good(f.prout(nexusB, 4, prWriteExclusive, 0xb, 0xa, 0))
	_, keys := readKeys(f, nexusB)
	if len(keys) != 1 || keys[0] != 0xb {
		t.Fatalf("keys after preempt %x", keys)
	}
	f.sense(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCRegistrationsPreempted)
	r := f.prin(nexusA, 1)
	if r.Data[21] != prWriteExclusive || binary.BigEndian.Uint64(r.Data[8:16]) != 0xb {
		t.Fatalf("reservation after preempt % x", r.Data)
	}
	// Preempting a key nobody holds conflicts.
	f.conflict(f.prout(nexusB, 4, prWriteExclusive, 0xb, 0x77, 0))
	// CLEAR drops everything and tells the others.
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0))
	f.good(f.prout(nexusB, 3, 0, 0xb, 0, 0))
	_, keys = readKeys(f, nexusB)
	if len(keys) != 0 {
		t.Fatalf("keys after clear %x", keys)
	}
	f.sense(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCReservationsPreempted)
	if f.lu.reservationActive.Load() {
		t.Fatal("reservation still active after CLEAR")
	}
}

func TestPRReportCapabilitiesAndFullStatus(t *testing.T) {
	f := newFixture(t, nil)
	r := f.prin(nexusA, 2)
	if binary.BigEndian.Uint16(r.Data[0:2]) != 8 || r.Data[3]&0x80 == 0 || r.Data[4] != 0xea || r.Data[5] != 0x01 {
		t.Fatalf("REPORT CAPABILITIES % x", r.Data)
	}
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0x04)) // ALL_TG_PT
	f.good(f.prout(nexusA, 1, prWriteExclusive, 0xa, 0, 0))
	r = f.prin(nexusB, 3)
	d := r.Data[8:]
	if binary.BigEndian.Uint64(d[0:8]) != 0xa || d[12] != 0x03 || d[13] != prWriteExclusive {
		t.Fatalf("full status descriptor % x", d[:24])
	}
	tidLen := binary.BigEndian.Uint32(d[20:24])
	name, _, ok := parseTransportID(d[24 : 24+tidLen])
	if !ok || name != nexusA.InitiatorPort {
		t.Fatalf("TransportID %q ok=%v", name, ok)
	}
}

func TestRegisterAndMove(t *testing.T) {
	f := newFixture(t, nil)
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0))
	f.good(f.prout(nexusA, 1, prExclusiveAccess, 0xa, 0, 0))
	tid := transportID(nexusB.InitiatorPort)
	p := make([]byte, 24+len(tid))
	binary.BigEndian.PutUint64(p[0:8], 0xa)
	binary.BigEndian.PutUint64(p[8:16], 0xb)
	p[17] = 0x02 // UNREG
	binary.BigEndian.PutUint16(p[18:20], 1)
	binary.BigEndian.PutUint32(p[20:24], uint32(len(tid)))
	copy(p[24:], tid)
	c := []byte{0x5f, 7, prExclusiveAccess, 0, 0, 0, 0, 0, byte(len(p)), 0}
	f.good(f.exec(nexusA, c, p, 0))
	f.good(f.exec(nexusB, testkit.CDB10(0x2a, 0, 0, 1), pattern(testBS, 1), 0))
	f.conflict(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	_, keys := readKeys(f, nexusB)
	if len(keys) != 1 || keys[0] != 0xb {
		t.Fatalf("keys %x", keys)
	}
}

func TestAPTPLPersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pr.state")
	f := newFixture(t, func(c *LUConfig) { c.StatePath = path })
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0x01))
	f.good(f.prout(nexusA, 1, prWriteExclusive, 0xa, 0, 0))
	r := f.prin(nexusA, 2)
	if r.Data[3]&0x01 == 0 || r.Data[2]&0x01 == 0 {
		t.Fatalf("PTPL_C/PTPL_A % x", r.Data)
	}
	f2 := newFixture(t, func(c *LUConfig) { c.StatePath = path })
	f2.conflict(f2.exec(nexusB, testkit.CDB10(0x2a, 0, 0, 1), pattern(testBS, 1), 0))
	f2.good(f2.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 1), pattern(testBS, 1), 0))
	// Registering without APTPL drops persistence.
	f2.good(f2.prout(nexusA, 0, 0, 0xa, 0xa, 0))
	f3 := newFixture(t, func(c *LUConfig) { c.StatePath = path })
	if _, keys := readKeys(f3, nexusA); len(keys) != 0 {
		t.Fatalf("keys survived without APTPL: %x", keys)
	}
}

func TestReserve6(t *testing.T) {
	f := newFixture(t, nil)
	f.good(f.exec(nexusA, []byte{0x16, 0, 0, 0, 0, 0}, nil, 0))
	f.good(f.exec(nexusA, []byte{0x16, 0, 0, 0, 0, 0}, nil, 0))
	f.conflict(f.exec(nexusB, []byte{0x16, 0, 0, 0, 0, 0}, nil, 0))
	f.good(f.exec(nexusB, []byte{0x17, 0, 0, 0, 0, 0}, nil, 0)) // no-op
	f.good(f.exec(nexusA, []byte{0x1a, 0, 0x3f, 0, 255, 0}, nil, 255))
	f.conflict(f.exec(nexusB, []byte{0x1a, 0, 0x3f, 0, 255, 0}, nil, 255))
	f.good(f.exec(nexusB, []byte{0x12, 0, 0, 0, 36, 0}, nil, 36))
	f.conflict(f.exec(nexusB, []byte{0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0}, nil, 255))
	f.good(f.exec(nexusA, []byte{0x17, 0, 0, 0, 0, 0}, nil, 0))
	f.good(f.exec(nexusB, []byte{0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0))
	f.conflict(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	// Nexus loss releases it.
	f.tgt.NexusLost(nexusB)
	f.good(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	// LU reset releases it and raises a UA on the other nexus.
	f.good(f.exec(nexusA, []byte{0x16, 0, 0, 0, 0, 0}, nil, 0))
	f.clearUA(nexusB)
	f.conflict(f.exec(nexusB, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	if err := f.tgt.ResetLU(nexusA, 0); err != nil {
		t.Fatal(err)
	}
	f.sense(f.exec(nexusB, testkit.CDB10(0x28, 0, 0, 1), nil, testBS), SenseUnitAttention, ASCBusDeviceResetOccurred)
	f.good(f.exec(nexusB, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	// SAM-5: the nexus that asked for the reset gets the unit attention
	// too (its other commands were aborted as well).
	f.sense(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS), SenseUnitAttention, ASCBusDeviceResetOccurred)
	f.good(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	// A persistent reservation makes RESERVE(6) from others conflict.
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0))
	f.good(f.prout(nexusA, 1, prWriteExclusive, 0xa, 0, 0))
	f.conflict(f.exec(nexusB, []byte{0x16, 0, 0, 0, 0, 0}, nil, 0))
	f.good(f.exec(nexusA, []byte{0x16, 0, 0, 0, 0, 0}, nil, 0))
	f.tgt.ResetTarget(nil)
	f.sense(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCBusDeviceResetOccurred)
	// The persistent reservation survives the reset.
	f.sense(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCBusDeviceResetOccurred)
	f.conflict(f.exec(nexusB, testkit.CDB10(0x2a, 0, 0, 1), pattern(testBS, 1), 0))
}

func TestPRAllRegistrantsAndUnregister(t *testing.T) {
	f := newFixture(t, nil)
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0))
	f.good(f.prout(nexusB, 0, 0, 0, 0xb, 0))
	f.good(f.prout(nexusA, 1, prExclusiveAccessAllReg, 0xa, 0, 0))
	// A leaves; B still holds the all-registrants reservation.
	f.good(f.prout(nexusA, 0, 0, 0xa, 0, 0))
	f.conflict(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	f.good(f.exec(nexusB, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	// B leaves: the reservation goes with the last registrant.
	f.good(f.prout(nexusB, 0, 0, 0xb, 0, 0))
	f.good(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	if f.lu.reservationActive.Load() {
		t.Fatal("reservation survived its last registrant")
	}
	// PREEMPT with key 0 under all-registrants removes everybody else.
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0))
	f.good(f.prout(nexusB, 0, 0, 0, 0xb, 0))
	f.good(f.prout(nexusA, 1, prWriteExclusiveAllReg, 0xa, 0, 0))
	f.good(f.prout(nexusA, 4, prExclusiveAccess, 0xa, 0, 0))
	f.sense(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCRegistrationsPreempted)
	f.conflict(f.exec(nexusB, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	// Holder of a registrants-only reservation unregisters: released,
	// and the other registrants are told.
	f.good(f.prout(nexusA, 2, prExclusiveAccess, 0xa, 0, 0))
	f.good(f.prout(nexusB, 0, 0, 0, 0xb, 0))
	f.good(f.prout(nexusA, 1, prWriteExclusiveRegOnly, 0xa, 0, 0))
	f.good(f.prout(nexusA, 0, 0, 0xa, 0, 0))
	f.sense(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCReservationsReleased)
	// PREEMPT without a reservation just removes the registrations.
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0))
	f.good(f.prout(nexusA, 4, prWriteExclusive, 0xa, 0xb, 0))
	_, keys := readKeys(f, nexusA)
	if len(keys) != 1 || keys[0] != 0xa {
		t.Fatalf("keys %x", keys)
	}
	f.sense(f.prout(nexusA, 4, prWriteExclusive, 0xa, 0, 0), SenseIllegalRequest, ASCInvalidFieldInParameterList)
	// Bad scope / type.
	f.sense(f.prout(nexusA, 1, 0x12, 0xa, 0, 0), SenseIllegalRequest, ASCInvalidFieldInCDB)
	f.sense(f.prout(nexusA, 1, 0x04, 0xa, 0, 0), SenseIllegalRequest, ASCInvalidFieldInCDB)
}

func TestAPTPLDoesNotPinWriteCacheSetting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lun.state")
	f := newFixture(t, func(c *LUConfig) { c.StatePath = path; c.WriteCache = true })
	f.good(f.prout(nexusA, 0, 0, 0, 0xa, 0x01))
	// The configuration now asks for write-through: the state file,
	// written for APTPL only, must not override it.
	f2 := newFixture(t, func(c *LUConfig) { c.StatePath = path; c.WriteCache = false })
	if f2.lu.WriteCacheEnabled() {
		t.Fatal("APTPL state file pinned WCE=1 over the configuration")
	}
	if _, keys := readKeys(f2, nexusA); len(keys) != 1 {
		t.Fatalf("APTPL registration lost: %x", keys)
	}
}
