package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cachelun/cachelun/target/scsi"
)

// Persistent reservations of clustered volumes (scsi.PRShare): the owner
// of a volume is authoritative for its logical units' reservations and
// saves each change in the image's metadata (one key per logical unit)
// before the command completes; a standby forwards PERSISTENT RESERVE IN
// and OUT over the peer link to the owner; a node that takes a volume
// loads the saved state into its logical units before they serve.

// reqPR: a PERSISTENT RESERVE command a peer forwards to the owner
// (prRequest → prResponse).
const reqPR = "pr"

// errNoticeToOwner refuses a reqPRNotice on the volume's owner, whose
// units raised their own attentions (the sender no longer owns it).
var errNoticeToOwner = errors.New("this node owns the volume")

// reqPRNotice: the unit attentions a change of the owner's persistent
// reservations raised, for the nexuses of the other nodes (prNotices).
const reqPRNotice = "pr-notice"

// prMetaPrefix + lower-case target IQN + "/" + LUN is the image metadata
// key of a logical unit's persistent reservation state.
const prMetaPrefix = "cachelun.cluster.pr."

func prMetaKey(iqn string, lun uint64) string {
	return prMetaPrefix + strings.ToLower(iqn) + "/" + strconv.FormatUint(lun, 10)
}

type prRequest struct {
	Volume    string     `json:"volume"`
	IQN       string     `json:"iqn"`
	LUN       uint64     `json:"lun"`
	Nexus     scsi.Nexus `json:"nexus"`
	CDB       []byte     `json:"cdb"`
	DataOut   []byte     `json:"data_out,omitempty"`
	DataInLen uint32     `json:"data_in_len"`
}

type prResponse struct {
	Status      scsi.Status `json:"status"`
	Sense       []byte      `json:"sense,omitempty"`
	Data        []byte      `json:"data,omitempty"`
	TransferLen uint32      `json:"transfer_len"`
}

// clusterPR is the scsi.PRShare of one logical unit of a clustered volume.
type clusterPR struct {
	c   *clusterd
	cv  *clusterVolume
	iqn string
	lun uint64
}

var _ scsi.PRShare = (*clusterPR)(nil)

// Authoritative: this node owns the volume (or is handing it over).
func (p *clusterPR) Authoritative() bool {
	view, _ := p.c.own.volumeView(p.cv.conf.Name)
	return view.State == ownOwner || view.State == ownMoving
}

// Forward runs the command on the owner, bounded by peer_timeout.
func (p *clusterPR) Forward(ctx context.Context, cmd *scsi.Command) (scsi.Response, error) {
	view, _ := p.c.own.volumeView(p.cv.conf.Name)
	if view.Owner == "" || view.Owner == p.c.cfg.Node {
		return scsi.Response{}, fmt.Errorf("volume %s: no owner known", p.cv.conf.Name)
	}
	req := prRequest{Volume: p.cv.conf.Name, IQN: p.iqn, LUN: p.lun, CDB: cmd.CDB, DataOut: cmd.DataOut, DataInLen: cmd.DataInLen}
	if cmd.Nexus != nil {
		req.Nexus = *cmd.Nexus
	}
	body, err := json.Marshal(req)
	if err != nil {
		return scsi.Response{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.c.cfg.PeerTimeout.D)
	defer cancel()
	out, err := p.c.call(ctx, view.Owner, reqPR, body)
	if err != nil {
		return scsi.Response{}, fmt.Errorf("volume %s: forwarding to its owner %s: %w", p.cv.conf.Name, view.Owner, err)
	}
	var r prResponse
	if err := json.Unmarshal(out, &r); err != nil {
		return scsi.Response{}, fmt.Errorf("volume %s: the owner's response: %w", p.cv.conf.Name, err)
	}
	return scsi.Response{Status: r.Status, Sense: r.Sense, Data: r.Data, TransferLen: r.TransferLen}, nil
}

// Save records the state in the image's metadata (this node holds its lock).
func (p *clusterPR) Save(_ context.Context, state []byte) error {
	held := p.cv.held.Load()
	if held == nil {
		return fmt.Errorf("volume %s: %w", p.cv.conf.Name, errNotOwner)
	}
	return held.meta.SetMetadata(prMetaKey(p.iqn, p.lun), string(state))
}

type prNotices struct {
	Volume  string          `json:"volume"`
	IQN     string          `json:"iqn"`
	LUN     uint64          `json:"lun"`
	Notices []scsi.PRNotice `json:"notices"`
}

// Notify sends the unit attentions of a saved change to every peer in the
// background, each call bounded by peer_timeout; a peer not reached misses
// them (its hosts see the change at their next PERSISTENT RESERVE IN).
func (p *clusterPR) Notify(notices []scsi.PRNotice) {
	body, err := json.Marshal(prNotices{Volume: p.cv.conf.Name, IQN: p.iqn, LUN: p.lun, Notices: notices})
	if err != nil {
		return
	}
	for peer := range p.c.groups {
		if peer == p.c.cfg.Node {
			continue
		}
		p.c.wg.Add(1)
		go func() {
			defer p.c.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), p.c.cfg.PeerTimeout.D)
			defer cancel()
			if _, err := p.c.call(ctx, peer, reqPRNotice, body); err != nil {
				p.c.log.Warn("cluster: a peer missed the unit attentions of a persistent reservation change",
					"peer", peer, "volume", p.cv.conf.Name, "lun", p.lun, "err", err)
			}
		}()
	}
}

// handlePRNotice raises the unit attentions the owner's change of
// persistent reservations established for this node's nexuses
// (reqPRNotice). The owner itself refuses them: its units raised their
// own.
func (c *clusterd) handlePRNotice(from string, body []byte) error {
	var n prNotices
	if err := json.Unmarshal(body, &n); err != nil {
		return fmt.Errorf("cluster: %s request from %s: %w", reqPRNotice, from, err)
	}
	if view, ok := c.own.volumeView(n.Volume); !ok || view.State == ownOwner || view.State == ownMoving {
		return fmt.Errorf("volume %s: %s from %s: %w", n.Volume, reqPRNotice, from, errNoticeToOwner)
	}
	st := c.target(n.IQN)
	if st == nil || !st.RaisePRNotices(n.LUN, n.Notices) {
		return fmt.Errorf("cluster: %s request from %s: no target %s LUN %d", reqPRNotice, from, n.IQN, n.LUN)
	}
	return nil
}

// loadPR loads the saved persistent reservations of the volume's logical
// units from the image (held: this node's lock). Caller does not hold
// cv.mu.
func (c *clusterd) loadPR(cv *clusterVolume, held *rbdHeld) error {
	cv.mu.Lock()
	lus := append([]clusterLU(nil), cv.lus...)
	cv.mu.Unlock()
	for _, l := range lus {
		if err := loadLUPR(held, l); err != nil {
			return fmt.Errorf("volume %s: %w", cv.conf.Name, err)
		}
	}
	return nil
}

func loadLUPR(held *rbdHeld, l clusterLU) error {
	val, ok, err := held.meta.Metadata(prMetaKey(l.iqn, l.lun))
	if err != nil {
		return fmt.Errorf("reading the persistent reservations of target %s LUN %d: %w", l.iqn, l.lun, err)
	}
	var state []byte
	if ok {
		state = []byte(val)
	}
	if err := l.lu.LoadPRState(state); err != nil {
		return fmt.Errorf("target %s LUN %d: %w", l.iqn, l.lun, err)
	}
	return nil
}

// handlePR serves a forwarded PERSISTENT RESERVE command (reqPR).
func (c *clusterd) handlePR(ctx context.Context, from string, body []byte) ([]byte, error) {
	var req prRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("cluster: %s request from %s: %w", reqPR, from, err)
	}
	if view, ok := c.own.volumeView(req.Volume); !ok || (view.State != ownOwner && view.State != ownMoving) {
		return nil, fmt.Errorf("volume %s: %w", req.Volume, errNotOwner)
	}
	st := c.target(req.IQN)
	if st == nil {
		return nil, fmt.Errorf("cluster: %s request from %s: no target %s", reqPR, from, req.IQN)
	}
	nx := req.Nexus
	r := st.ExecuteForwarded(ctx, &scsi.Command{Nexus: &nx, LUN: req.LUN, CDB: req.CDB, DataOut: req.DataOut, DataInLen: req.DataInLen})
	return json.Marshal(prResponse{Status: r.Status, Sense: r.Sense, Data: r.Data, TransferLen: r.TransferLen})
}
