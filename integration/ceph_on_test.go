//go:build ceph

package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/cephtest"
)

// cephEnabled: with the ceph build tag the daemon is built with it too (it
// serves RBD volumes), and the RBD tests run against one throwaway cluster
// per test process, started by the first test that needs it.
const cephEnabled = true

// rbdPool is the pool the RBD tests create their images in.
const rbdPool = "cachelun"

var ceph struct {
	mu      sync.Mutex
	cluster *cephtest.Cluster
	err     error
}

// needCeph returns the test process's cluster, starting it (and creating
// rbdPool) on first use; $CEPHTEST_DIR attaches to one started by hand.
func needCeph(t *testing.T) *cephtest.Cluster {
	t.Helper()
	ceph.mu.Lock()
	defer ceph.mu.Unlock()
	if ceph.cluster == nil && ceph.err == nil {
		ceph.cluster, ceph.err = startCeph()
	}
	if ceph.err != nil {
		t.Fatal(ceph.err)
	}
	return ceph.cluster
}

func startCeph() (*cephtest.Cluster, error) {
	var c *cephtest.Cluster
	var err error
	if dir := os.Getenv("CEPHTEST_DIR"); dir != "" {
		c, err = cephtest.Attach(dir)
	} else {
		c, err = cephtest.Start(context.Background(), 3*time.Minute)
	}
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	for _, args := range [][]string{
		{"ceph", "osd", "pool", "create", rbdPool, "8"},
		{"rbd", "pool", "init", rbdPool},
	} {
		if _, err := c.Run(ctx, args[0], args[1:]...); err != nil && !strings.Contains(err.Error(), "already exists") {
			c.Stop()
			return nil, fmt.Errorf("integration: %w", err)
		}
	}
	return c, nil
}

// stopCeph stops the cluster, if a test started one (TestMain, after the
// tests).
func stopCeph() error {
	ceph.mu.Lock()
	defer ceph.mu.Unlock()
	if ceph.cluster == nil {
		return nil
	}
	return ceph.cluster.Stop()
}
