package controlapi_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/ca"
	"github.com/flotilla/flotilla/manager/controlapi"
	"github.com/flotilla/flotilla/manager/store"
)

func TestAutolockUnlockKeyLifecycle(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	if _, err := h.control.GetUnlockKey(ctx, &api.GetUnlockKeyRequest{}); err == nil {
		t.Fatal("GetUnlockKey without a cluster succeeded")
	}
	if err := h.store.Update(ctx, func(tx store.Tx) error {
		return tx.Create(&api.Cluster{ID: "c1", Spec: defaults.ClusterSpec()})
	}); err != nil {
		t.Fatal(err)
	}
	update := func(autolock bool, rotate bool) (*api.Cluster, error) {
		t.Helper()
		r, err := h.control.ListClusters(ctx, &api.ListClustersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		c := r.Clusters[0]
		spec := c.Spec.Copy()
		spec.EncryptionConfig.AutoLockManagers = autolock
		resp, err := h.control.UpdateCluster(ctx, &api.UpdateClusterRequest{ClusterID: c.ID, ClusterVersion: c.Meta.Version,
			Spec: spec, Rotation: api.KeyRotation{ManagerUnlockKey: rotate}})
		if err != nil {
			return nil, err
		}
		if resp.Cluster.UnlockKeys != nil {
			t.Fatal("UpdateCluster returned the unlock keys")
		}
		return resp.Cluster, nil
	}
	key := func() string {
		t.Helper()
		r, err := h.control.GetUnlockKey(ctx, &api.GetUnlockKeyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return r.UnlockKey
	}
	stored := func() ca.UnlockKey {
		var c *api.Cluster
		h.store.View(func(tx store.ReadTx) { c = store.Get[*api.Cluster](tx, "c1") })
		return controlapi.ManagerUnlockKey(c)
	}

	if k := key(); k != "" {
		t.Fatalf("unlock key %q with autolock off", k)
	}
	_, err := update(false, true)
	wantCode(t, err, codes.FailedPrecondition, "autolock is off")

	if _, err := update(true, false); err != nil {
		t.Fatal(err)
	}
	k1 := key()
	parsed, err := ca.ParseUnlockKey(k1)
	if err != nil || !parsed.Equal(stored()) {
		t.Fatalf("GetUnlockKey = %q (%v), not the stored key", k1, err)
	}
	// Other updates keep the key.
	if _, err := update(true, false); err != nil {
		t.Fatal(err)
	}
	if key() != k1 {
		t.Fatal("an update without rotation changed the unlock key")
	}
	// Never returned by Get, List or Watch-visible API objects.
	g, err := h.control.GetCluster(ctx, &api.GetClusterRequest{ClusterID: "c1"})
	if err != nil || g.Cluster.UnlockKeys != nil || strings.Contains(g.Cluster.String(), k1[9:]) {
		t.Fatalf("GetCluster returned the unlock key: %v", err)
	}

	if _, err := update(true, true); err != nil {
		t.Fatal(err)
	}
	k2 := key()
	if k2 == k1 || !strings.HasPrefix(k2, "SWMKEY-1-") {
		t.Fatalf("rotation: %q then %q", k1, k2)
	}
	if _, err := update(false, false); err != nil {
		t.Fatal(err)
	}
	if k := key(); k != "" || stored() != nil {
		t.Fatalf("autolock off left the unlock key %q", k)
	}
	var c *api.Cluster
	h.store.View(func(tx store.ReadTx) { c = store.Get[*api.Cluster](tx, "c1") })
	if len(c.UnlockKeys) != 0 {
		t.Fatalf("autolock off left %d unlock keys in the store", len(c.UnlockKeys))
	}
}
