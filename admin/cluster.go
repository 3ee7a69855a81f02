package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// ClusterSource is an optional method of a Backend: a cluster node's
// status (GET /v1/cluster, `cachelun cluster status`). A daemon that is
// not a cluster node returns an error.
type ClusterSource interface {
	ClusterStatus() (ClusterResponse, error)
}

// ClusterResponse is GET /v1/cluster.
type ClusterResponse struct {
	// Node is this node's name; TargetPortGroup its ALUA target port
	// group id and iSCSI target portal group tag.
	Node            string `json:"node"`
	TargetPortGroup uint16 `json:"target_port_group"`
	// Groups maps every node of the cluster to its target port group
	// (node names sorted: 1..N).
	Groups []ClusterGroup `json:"groups"`
	// Snapshot is the peer link's state (package cluster's Snapshot:
	// nodes, link states, replication lag, degraded policy), as JSON.
	Snapshot json.RawMessage `json:"snapshot"`
	// Volumes are the clustered volumes, by name.
	Volumes []ClusterVolume `json:"volumes"`
}

// ClusterGroup is one node's target port group.
type ClusterGroup struct {
	Node string `json:"node"`
	ID   uint16 `json:"id"`
}

// ClusterVolume is one clustered volume as this node sees it.
type ClusterVolume struct {
	Name string `json:"name"`
	// Owner is the node that holds the image's lock ("" unknown or none).
	Owner string `json:"owner"`
	// State is this node's: owner, standby or unavailable (lost the lock).
	State string `json:"state"`
	// ALUA is the asymmetric access state of this node's target port
	// group for the volume's logical units.
	ALUA string `json:"alua"`
	// Mode is the cache mode it runs in (writethrough on a cluster node).
	Mode   string    `json:"mode"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
	// Behind, on the owner of a replicated volume: the peers recorded in
	// the image as behind (they missed ksets it may write back); a
	// takeover by one of them serves the image without its mirror. They
	// leave the record once back in sync.
	Behind []string `json:"behind,omitempty"`
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	src, ok := s.cfg.Backend.(ClusterSource)
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "this daemon is not a cluster node")
		return
	}
	st, err := src.ClusterStatus()
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// Cluster returns the node's cluster status.
func (c *Client) Cluster(ctx context.Context) (ClusterResponse, error) {
	var r ClusterResponse
	err := c.do(ctx, http.MethodGet, "/v1/cluster", nil, &r)
	return r, err
}

// VolumeMover is an optional method of a Backend: a planned move of a
// clustered volume to another node (POST /v1/volumes/{name}/move,
// `cachelun volume move NAME NODE`), run on the volume's owner.
type VolumeMover interface {
	MoveVolume(ctx context.Context, volume, node string) error
}

// MoveRequest is the body of POST /v1/volumes/{name}/move.
type MoveRequest struct {
	Node string `json:"node"`
}

// MoveResponse answers it: the volume was released to Node, which takes
// it at once.
type MoveResponse struct {
	Volume string `json:"volume"`
	Node   string `json:"node"`
}

func (s *Server) handleMove(w http.ResponseWriter, r *http.Request) {
	var req MoveRequest
	if err := decodeBody(r, &req, false); err != nil || req.Node == "" {
		writeError(w, http.StatusBadRequest, "bad_request", "give the node to move the volume to: {\"node\": NAME}")
		return
	}
	mv, ok := s.cfg.Backend.(VolumeMover)
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "this daemon is not a cluster node")
		return
	}
	name := r.PathValue("name")
	if err := mv.MoveVolume(r.Context(), name, req.Node); err != nil {
		writeError(w, http.StatusConflict, "conflict", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, MoveResponse{Volume: name, Node: req.Node})
}

// MoveVolume hands a clustered volume over to node (on its owner).
func (c *Client) MoveVolume(ctx context.Context, volume, node string) (MoveResponse, error) {
	var r MoveResponse
	err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/move", MoveRequest{Node: node}, &r)
	return r, err
}
