package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// clusterSnapshot is the part of the peer link's snapshot (package
// cluster's Snapshot, carried as JSON in admin.ClusterResponse) that
// `cluster status` prints.
type clusterSnapshot struct {
	Cluster    string `json:"cluster"`
	Listen     string `json:"listen"`
	Policy     string `json:"policy"`
	AllInSync  bool   `json:"all_in_sync"`
	RefuseSync bool   `json:"refuse_sync"`
	Peers      []struct {
		Name          string        `json:"name"`
		Addr          string        `json:"addr"`
		State         string        `json:"state"`
		StateSince    time.Time     `json:"state_since"`
		LastHeard     time.Time     `json:"last_heard"`
		LastError     string        `json:"last_error"`
		LagShipments  int           `json:"lag_shipments"`
		LagBytes      int64         `json:"lag_bytes"`
		OldestUnacked time.Duration `json:"oldest_unacked_ns"`
		Inbound       bool          `json:"inbound"`
	} `json:"peers"`
}

// Cluster runs `cachelun cluster status [--json]`: the nodes, the state of
// the peer links, the replication lag, and the owner of every clustered
// volume with this node's ALUA state for it.
func Cluster(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, rest := subcommand(args)
	if sub != "status" {
		return groupUsage(sub, rest, "cluster status [--json]", stdout, stderr)
	}
	var c common
	fs := newFlags("cluster status", "cluster status [--json]", stdout, stderr)
	c.register(fs)
	pos, code, ok := parseArgs(fs, rest)
	if !ok {
		return code
	}
	if len(pos) != 0 {
		return usageError(fs, stderr, "unexpected argument %q", pos[0])
	}
	r, err := c.client().Cluster(ctx)
	if err != nil {
		return failure(stderr, &c, "cluster status", err)
	}
	if c.json {
		printJSON(stdout, r)
		return ExitOK
	}
	var s clusterSnapshot
	if err := json.Unmarshal(r.Snapshot, &s); err != nil {
		fmt.Fprintf(stderr, "cachelun cluster status: the daemon's peer-link snapshot does not decode: %v\n", err)
		return ExitFailed
	}
	fmt.Fprintf(stdout, "cluster %s, node %s (target port group %d), peer link on %s\n", s.Cluster, r.Node, r.TargetPortGroup, s.Listen)
	sync := "all peers in sync"
	if !s.AllInSync {
		sync = "not every peer in sync"
	}
	fmt.Fprintf(stdout, "degraded policy %s: %s\n\n", s.Policy, sync)
	tw := table(stdout)
	fmt.Fprintln(tw, "PEER\tADDRESS\tGROUP\tLINK\tSINCE\tINBOUND\tLAST HEARD\tLAG\tLAST ERROR")
	group := map[string]uint16{}
	for _, g := range r.Groups {
		group[g.Node] = g.ID
	}
	for _, p := range s.Peers {
		heard := "never"
		if !p.LastHeard.IsZero() {
			heard = humanDuration(time.Since(p.LastHeard)) + " ago"
		}
		inbound := "down"
		if p.Inbound {
			inbound = "connected"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.Addr, group[p.Name], p.State,
			humanDuration(time.Since(p.StateSince)), inbound, heard, humanBytes(p.LagBytes), orDash(p.LastError))
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	tw = table(stdout)
	fmt.Fprintln(tw, "VOLUME\tOWNER\tTHIS NODE\tALUA\tMODE\tSINCE\tMIRRORS BEHIND")
	for _, v := range r.Volumes {
		owner := v.Owner
		if owner == "" {
			owner = "(unknown)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, owner, v.State, v.ALUA, v.Mode, humanDuration(time.Since(v.Since)),
			orDash(strings.Join(v.Behind, ",")))
	}
	tw.Flush()
	return ExitOK
}

// volumeMove runs `cachelun volume move NAME NODE` on the volume's owner:
// it goes transitioning (hosts retry), is flushed and released, and NODE
// takes it.
func volumeMove(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	fs := newFlags("volume move", "volume move NAME NODE [--json]", stdout, stderr)
	c.register(fs)
	pos, code, ok := parseInterleaved(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return usageError(fs, stderr, "want the volume and the node to move it to")
	}
	r, err := c.client().MoveVolume(ctx, pos[0], pos[1])
	if err != nil {
		return failure(stderr, &c, "volume move", err)
	}
	if c.json {
		printJSON(stdout, r)
		return ExitOK
	}
	fmt.Fprintf(stdout, "volume %s released to node %s, which takes it over now\n", r.Volume, r.Node)
	return ExitOK
}
