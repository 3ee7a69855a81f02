package daemon

import (
	"context"
	"encoding/binary"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/target/scsi"
)

// memMetadata is an image's metadata in memory.
type memMetadata struct {
	mu sync.Mutex
	kv map[string]string
}

func (m *memMetadata) Metadata(key string) (string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.kv[key]
	return v, ok, nil
}

func (m *memMetadata) SetMetadata(key, value string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.kv[key] = value
	return nil
}

// prNode is one node's cluster part with a target exporting v0 as LUN 0.
type prNode struct {
	cl  *clusterd
	tgt *scsi.Target
}

const prTestIQN = "iqn.2026-11.io.cachelun:pr"

func newPRNode(t *testing.T, node string) *prNode {
	t.Helper()
	d := &Daemon{log: slog.New(slog.DiscardHandler), registry: prometheus.NewRegistry()}
	var peers []string
	for _, n := range []string{"a", "b"} {
		if n != node {
			peers = append(peers, n+"@127.0.0.1:1")
		}
	}
	cfg := &conf.Config{Cluster: &conf.Cluster{Name: "cachelun", Node: node, PeerTimeout: conf.Duration{D: 2 * time.Second}, Peers: peers}}
	cl, err := newClusterd(d, cfg, &fakeClock{now: time.Unix(1_800_000_000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	sw := &switchVolume{}
	sw.set(standbyVolume{name: "v0", size: 1 << 20, bs: 512})
	cl.vols["v0"] = &clusterVolume{conf: conf.Volume{Name: "v0", BlockSize: 512, Mode: "writeback"}, sw: sw}
	cl.own.add("v0", &fakeLock{c: newFakeCeph(), node: node})
	n := &prNode{cl: cl, tgt: scsi.NewTarget(scsi.TargetConfig{Name: prTestIQN})}
	cl.targetOf = func(string) *scsi.Target { return n.tgt }
	id := scsi.LUNIdentity(prTestIQN, "v0")
	if err := cl.addLU("v0", prTestIQN, 0, func(vol scsi.Volume, alua *scsi.ALUAConfig, pr scsi.PRShare) (*scsi.LU, error) {
		return n.tgt.AddLU(0, scsi.LUConfig{Volume: vol, SerialNumber: id.Serial, DeviceID: id.DeviceID, ALUA: alua, PR: pr})
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// newPRPair is nodes a, the owner of v0 holding the image (meta), and b,
// standby, whose peer calls reach each other's Handle.
func newPRPair(t *testing.T) (a, b *prNode, meta *memMetadata) {
	t.Helper()
	meta = &memMetadata{kv: map[string]string{}}
	a, b = newPRNode(t, "a"), newPRNode(t, "b")
	a.own(t, meta)
	b.cl.own.noteOwner("v0", "a")
	b.cl.callPeer = func(ctx context.Context, node, kind string, body []byte) ([]byte, error) {
		if node != "a" {
			t.Errorf("the standby called %s, want the owner a", node)
		}
		return a.cl.Handle(ctx, "b", kind, body)
	}
	a.cl.callPeer = func(ctx context.Context, node, kind string, body []byte) ([]byte, error) {
		return b.cl.Handle(ctx, "a", kind, body)
	}
	return a, b, meta
}

// own makes the node the volume's owner, holding the image (meta).
func (n *prNode) own(t *testing.T, meta *memMetadata) {
	t.Helper()
	cv := n.cl.vols["v0"]
	held := &rbdHeld{meta: meta}
	cv.held.Store(held)
	n.cl.own.set(n.cl.own.vols["v0"], ownOwner, n.cl.cfg.Node, "test")
	if err := n.cl.loadPR(cv, held); err != nil {
		t.Fatal(err)
	}
}

func (n *prNode) exec(t *testing.T, nx *scsi.Nexus, cdb, out []byte, inLen uint32) scsi.Response {
	t.Helper()
	for range 4 { // the power-on and ALUA unit attentions
		r := n.tgt.Execute(context.Background(), &scsi.Command{Nexus: nx, CDB: cdb, DataOut: out, DataInLen: inLen})
		if r.Status == scsi.StatusCheckCondition && len(r.Sense) > 2 && r.Sense[2]&0x0f == 0x06 {
			continue
		}
		return r
	}
	t.Fatal("unit attentions do not clear")
	return scsi.Response{}
}

func (n *prNode) readKeys(t *testing.T, nx *scsi.Nexus) []uint64 {
	t.Helper()
	r := n.exec(t, nx, []byte{0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil, 4096)
	if r.Status != scsi.StatusGood {
		t.Fatalf("READ KEYS: status %#x sense % x", r.Status, r.Sense)
	}
	var keys []uint64
	l := binary.BigEndian.Uint32(r.Data[4:8])
	for i := uint32(0); i < l; i += 8 {
		keys = append(keys, binary.BigEndian.Uint64(r.Data[8+i:]))
	}
	return keys
}

func register(key uint64) ([]byte, []byte) {
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p[8:16], key)
	p[20] = 0x04 // ALL_TG_PT
	return []byte{0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0}, p
}

// TestClusterPRThroughEitherNode: a registration made through the standby
// node is forwarded to the owner, applied there, saved in the image's
// metadata and read back through both nodes; the node that takes the
// volume over loads it and answers from it alone.
func TestClusterPRThroughEitherNode(t *testing.T) {
	a, b, meta := newPRPair(t)
	// a host's ports: through a's target port group (1) and b's (2)
	viaA := &scsi.Nexus{InitiatorName: "iqn.h", InitiatorPort: "iqn.h,i,0x1", TargetPort: prTestIQN + ",t,0x0001", RelativePortID: 1}
	viaB := &scsi.Nexus{InitiatorName: "iqn.h", InitiatorPort: "iqn.h,i,0x1", TargetPort: prTestIQN + ",t,0x0002", RelativePortID: 2}

	cdb, p := register(0xabc)
	if r := b.exec(t, viaB, cdb, p, 0); r.Status != scsi.StatusGood {
		t.Fatalf("REGISTER through the standby: status %#x sense % x", r.Status, r.Sense)
	}
	if keys := a.readKeys(t, viaA); len(keys) != 1 || keys[0] != 0xabc {
		t.Fatalf("keys through the owner: %x", keys)
	}
	if keys := b.readKeys(t, viaB); len(keys) != 1 || keys[0] != 0xabc {
		t.Fatalf("keys through the standby: %x", keys)
	}
	if _, ok := meta.kv[prMetaKey(prTestIQN, 0)]; !ok {
		t.Fatalf("nothing saved in the image's metadata: %v", meta.kv)
	}

	// b takes over (a died): it loads the saved state and answers alone
	a.cl.own.set(a.cl.own.vols["v0"], ownUnavailable, "", "test")
	b.own(t, meta)
	b.cl.callPeer = func(context.Context, string, string, []byte) ([]byte, error) {
		t.Error("the owner forwarded a command")
		return nil, errNotOwner
	}
	if keys := b.readKeys(t, viaB); len(keys) != 1 || keys[0] != 0xabc {
		t.Fatalf("keys through the new owner: %x", keys)
	}
	// the old owner, no longer authoritative, refuses forwarded commands
	if _, err := a.cl.Handle(context.Background(), "b", reqPR, []byte(`{"volume":"v0","iqn":"`+prTestIQN+`","cdb":"XgAAAAAAABAAAA=="}`)); err == nil {
		t.Error("a node that does not own the volume served a forwarded command")
	}
}

// TestClusterPRNoticesThroughPeerLink: a host preempted through the owner
// gets REGISTRATIONS PREEMPTED on its nexus through the standby node: the
// owner sends the unit attention over the peer link (reqPRNotice) once the
// change is saved. The owner refuses such a notice.
func TestClusterPRNoticesThroughPeerLink(t *testing.T) {
	a, b, _ := newPRPair(t)
	h1 := &scsi.Nexus{InitiatorName: "iqn.h1", InitiatorPort: "iqn.h1,i,0x1", TargetPort: prTestIQN + ",t,0x0001", RelativePortID: 1}
	h2 := &scsi.Nexus{InitiatorName: "iqn.h2", InitiatorPort: "iqn.h2,i,0x1", TargetPort: prTestIQN + ",t,0x0002", RelativePortID: 2}
	cdb, p := register(0x111)
	if r := a.exec(t, h1, cdb, p, 0); r.Status != scsi.StatusGood {
		t.Fatalf("REGISTER through the owner: status %#x sense % x", r.Status, r.Sense)
	}
	cdb, p = register(0x222)
	if r := b.exec(t, h2, cdb, p, 0); r.Status != scsi.StatusGood {
		t.Fatalf("REGISTER through the standby: status %#x sense % x", r.Status, r.Sense)
	}
	// PERSISTENT RESERVE IN, which a standby serves (forwarded), reports
	// the unit attentions of its nexus first
	readKeys := []byte{0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}
	if keys := b.readKeys(t, h2); len(keys) != 2 {
		t.Fatalf("keys before the preemption: %x", keys)
	}

	// PREEMPT (write exclusive) of h2's key by h1, through the owner
	p = make([]byte, 24)
	binary.BigEndian.PutUint64(p[0:8], 0x111)
	binary.BigEndian.PutUint64(p[8:16], 0x222)
	if r := a.exec(t, h1, []byte{0x5f, 0x04, 0x01, 0, 0, 0, 0, 0, 24, 0}, p, 0); r.Status != scsi.StatusGood {
		t.Fatalf("PREEMPT: status %#x sense % x", r.Status, r.Sense)
	}
	a.cl.wg.Wait() // the notices in flight
	r := b.tgt.Execute(context.Background(), &scsi.Command{Nexus: h2, CDB: readKeys, DataInLen: 4096})
	if r.Status != scsi.StatusCheckCondition || len(r.Sense) < 14 || r.Sense[2]&0x0f != 0x06 || r.Sense[12] != 0x2a || r.Sense[13] != 0x05 {
		t.Fatalf("h2 through the standby after the preemption: status %#x sense % x, want UNIT ATTENTION 2a/05", r.Status, r.Sense)
	}
	if keys := b.readKeys(t, h2); len(keys) != 1 || keys[0] != 0x111 {
		t.Fatalf("keys after the preemption: %x", keys)
	}
	if _, err := a.cl.Handle(context.Background(), "b", reqPRNotice, []byte(`{"volume":"v0","iqn":"`+prTestIQN+`","lun":0,"notices":[]}`)); err == nil {
		t.Error("the owner took the unit attentions of a notice")
	}
}
