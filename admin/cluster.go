package admin

import (
	"context"
	"encoding/json"
	"net/http"
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
