package scsi

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
)

// gatewayShare is a PRShare between two fixtures (two gateways): the one
// named by *owner is authoritative, the other forwards to it; saves go to
// one store, as to the image's metadata.
type gatewayShare struct {
	owner *string
	peers map[string]*fixture

	mu       sync.Mutex
	saved    []byte
	saves    int
	notified int
	failErr  error // Save fails with it when set
}

type shareView struct {
	*gatewayShare
	self string
}

func (s shareView) Authoritative() bool { return *s.owner == s.self }

func (s shareView) Forward(ctx context.Context, cmd *Command) (Response, error) {
	owner := s.peers[*s.owner]
	if owner == nil {
		return Response{}, errors.New("no owner reachable")
	}
	return owner.tgt.ExecuteForwarded(ctx, cmd), nil
}

func (s shareView) Save(_ context.Context, state []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failErr != nil {
		return s.failErr
	}
	s.saved = bytes.Clone(state)
	s.saves++
	return nil
}

// Notify delivers the notices to the other gateways at once, and counts
// them.
func (s shareView) Notify(notices []PRNotice) {
	s.mu.Lock()
	s.notified += len(notices)
	s.mu.Unlock()
	for name, f := range s.peers {
		if name != s.self {
			f.tgt.RaisePRNotices(f.lu.lun, notices)
		}
	}
}

// twoGateways is gateways a (authoritative) and b sharing one unit's
// reservations through sh.
func twoGateways(t *testing.T) (sh *gatewayShare, a, b *fixture) {
	owner := "a"
	sh = &gatewayShare{owner: &owner, peers: map[string]*fixture{}}
	a = newFixture(t, func(c *LUConfig) { c.PR = shareView{sh, "a"} })
	b = newFixture(t, func(c *LUConfig) { c.PR = shareView{sh, "b"} })
	sh.peers["a"], sh.peers["b"] = a, b
	return sh, a, b
}

// nexus of host h through gateway g's port (relative port = group).
func gwNexus(h string, g uint16) *Nexus {
	return &Nexus{InitiatorName: "iqn.test:" + h, InitiatorPort: "iqn.test:" + h + ",i,0x000000000001",
		TargetPort: "iqn.test:tgt,t,0x000" + string(rune('0'+g)), RelativePortID: g}
}

// TestPRSharedAcrossGateways: registrations and a reservation made through
// either gateway's port land in the authoritative gateway's state, are
// read the same through both, are saved before the command completes, and
// conflict checks on the authoritative gateway see them. A failed save
// undoes the change. The other gateway, made authoritative (a takeover),
// serves the saved state.
func TestPRSharedAcrossGateways(t *testing.T) {
	sh, a, b := twoGateways(t)
	host1a, host1b, host2b := gwNexus("h1", 1), gwNexus("h1", 2), gwNexus("h2", 2)
	for _, n := range []*Nexus{host1a, host1b, host2b} {
		a.clearUA(n)
		b.clearUA(n)
	}

	// h1 registers through a (authoritative), h2 through b (forwarded)
	// for every target port (ALL_TG_PT: both gateways' ports)
	a.good(a.prout(host1a, 0, 0, 0, 0x11, 0))
	b.good(b.prout(host2b, 0, 0, 0, 0x22, 0x04))
	for name, f := range map[string]*fixture{"a": a, "b": b} {
		gen, keys := readKeys(f, host1b)
		if gen != 2 || len(keys) != 2 || keys[0] != 0x11 || keys[1] != 0x22 {
			t.Fatalf("READ KEYS through %s: gen %d keys %x", name, gen, keys)
		}
	}
	// b's own unit holds nothing: the state is a's
	b.lu.resMu.Lock()
	local := len(b.lu.pr.Regs)
	b.lu.resMu.Unlock()
	if local != 0 {
		t.Fatalf("the forwarding gateway keeps %d registrations of its own", local)
	}
	if sh.saves != 2 {
		t.Fatalf("%d saves for two registrations", sh.saves)
	}

	// h2 reserves (write exclusive) through b; h1's write through a, the
	// gateway that serves I/O, conflicts; h2's (registered for every
	// port) does not
	b.good(b.prout(host2b, 1, prWriteExclusive, 0x22, 0, 0))
	write := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	a.conflict(a.exec(host1a, write, make([]byte, testBS), 0))
	h2a := gwNexus("h2", 1)
	a.clearUA(h2a)
	a.good(a.exec(h2a, write, make([]byte, testBS), 0))

	// a failed save: the change does not happen
	sh.mu.Lock()
	sh.failErr = errors.New("cluster unreachable")
	sh.mu.Unlock()
	a.sense(a.prout(host1a, 0, 0, 0x11, 0x33, 0), SenseHardwareError, ASCInternalTargetFailure)
	sh.mu.Lock()
	sh.failErr = nil
	sh.mu.Unlock()
	if _, keys := readKeys(b, host1b); len(keys) != 2 || keys[0] != 0x11 {
		t.Fatalf("keys after a failed save: %x", keys)
	}

	// takeover: b loads the saved state and is authoritative
	*sh.owner = "b"
	if err := b.lu.LoadPRState(sh.saved); err != nil {
		t.Fatal(err)
	}
	r := b.prin(host1b, 1) // READ RESERVATION
	if len(r.Data) < 24 || r.Data[21]&0x0f != prWriteExclusive {
		t.Fatalf("READ RESERVATION after the takeover: % x", r.Data)
	}
	b.conflict(b.exec(host1b, write, make([]byte, testBS), 0))
	// a now forwards to b
	if _, keys := readKeys(a, host1a); len(keys) != 2 {
		t.Fatalf("READ KEYS through the old owner after the takeover: %x", keys)
	}

	// the authoritative gateway unreachable: NOT READY, transition
	*sh.owner = "nobody"
	a.sense(a.exec(host1a, []byte{0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil, 4096), SenseNotReady, ASCLUNotAccessibleTransition)
}

// TestExecuteForwardedOnlyPR: a forwarded command other than PERSISTENT
// RESERVE IN/OUT is refused.
func TestExecuteForwardedOnlyPR(t *testing.T) {
	f := newFixture(t, nil)
	r := f.tgt.ExecuteForwarded(context.Background(), &Command{Nexus: nexusA, CDB: []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}, DataOut: make([]byte, testBS)})
	checkSense(t, r, SenseIllegalRequest, ASCInvalidCommandOperationCode)
}

// TestLoadPRStateRefusesGarbage: a state that does not decode, or names
// an invalid reservation, is refused and changes nothing.
func TestLoadPRStateRefusesGarbage(t *testing.T) {
	f := newFixture(t, nil)
	f.good(f.prout(nexusA, 0, 0, 0, 0xaa, 0))
	for _, bad := range []string{"{", `{"reserved":true,"type":2}`} {
		if err := f.lu.LoadPRState([]byte(bad)); err == nil {
			t.Errorf("LoadPRState(%s) accepted", bad)
		}
	}
	if _, keys := readKeys(f, nexusA); len(keys) != 1 || keys[0] != 0xaa {
		t.Fatalf("keys after refused loads: %x", keys)
	}
}

// TestPRNoticesReachOtherGateways: the unit attentions a change of the
// shared reservations raises reach the registrants' nexuses on the other
// gateway (PRShare.Notify, Target.RaisePRNotices): REGISTRATIONS PREEMPTED
// for a host preempted through the authoritative gateway, RESERVATIONS
// RELEASED for the registrants when a registrants-only reservation is
// released; never for the nexus that made the change nor for a nexus that
// is not a registrant; none when the change could not be saved.
func TestPRNoticesReachOtherGateways(t *testing.T) {
	sh, a, b := twoGateways(t)
	host1a, host1b, host2b := gwNexus("h1", 1), gwNexus("h1", 2), gwNexus("h2", 2)
	clearAll := func() {
		a.clearUA(host1a)
		b.clearUA(host1b)
		b.clearUA(host2b)
	}
	clearAll()
	tur := []byte{0, 0, 0, 0, 0, 0}

	// h1 registers through a (its port only), h2 through b (b's port)
	a.good(a.prout(host1a, 0, 0, 0, 0x11, 0))
	b.good(b.prout(host2b, 0, 0, 0, 0x22, 0))
	// h1 preempts h2's registration through a: h2's nexus on b hears of it
	a.good(a.prout(host1a, 4, prWriteExclusive, 0x11, 0x22, 0))
	b.sense(b.exec(host2b, tur, nil, 0), SenseUnitAttention, ASCRegistrationsPreempted)
	b.good(b.exec(host2b, tur, nil, 0))
	b.good(b.exec(host1b, tur, nil, 0)) // h1 through b: not preempted
	a.good(a.exec(host1a, tur, nil, 0)) // the preempting nexus

	// a registrants-only reservation released: the other registrants
	// (h2, registered again through b for every port) hear of it; h1's
	// nexus through b is no registrant (h1 registered a's port only)
	a.good(a.prout(host1a, 2, prWriteExclusive, 0x11, 0, 0)) // RELEASE the preempting reservation
	b.good(b.prout(host2b, 0, 0, 0, 0x22, 0x04))
	a.good(a.prout(host1a, 1, prWriteExclusiveRegOnly, 0x11, 0, 0))
	clearAll()
	a.good(a.prout(host1a, 2, prWriteExclusiveRegOnly, 0x11, 0, 0))
	b.sense(b.exec(host2b, tur, nil, 0), SenseUnitAttention, ASCReservationsReleased)
	b.good(b.exec(host1b, tur, nil, 0))
	a.good(a.exec(host1a, tur, nil, 0))

	// a change that could not be saved raises nothing anywhere
	sh.mu.Lock()
	sh.failErr = errors.New("cluster unreachable")
	notified := sh.notified
	sh.mu.Unlock()
	a.sense(a.prout(host1a, 4, prWriteExclusive, 0x11, 0x22, 0), SenseHardwareError, ASCInternalTargetFailure)
	b.good(b.exec(host2b, tur, nil, 0))
	sh.mu.Lock()
	sh.failErr = nil
	if sh.notified != notified {
		t.Errorf("%d notices sent for a change that was undone", sh.notified-notified)
	}
	sh.mu.Unlock()
}
