package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
)

// TestECSSourceEndToEnd discovers loop devices through the ECS source: the
// fake ECS lists them as this instance's local disks (a loop device's serial
// is its backing file), one SSD and one HDD category, plus a third loop
// device the cloud does not know. Volumes of each category go through
// create, stage, publish and delete on the right disk; the unknown device is
// never used.
func TestECSSourceEndToEnd(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ssd, hdd, stranger := testutil.NewLoop(t, dir, 64<<20), testutil.NewLoop(t, dir, 64<<20), testutil.NewLoop(t, dir, 64<<20)
	f := cloud.NewFake(cloud.Instance{ID: "i-e2e", Type: "ecs.i4.large", Region: "cn-hangzhou", Zone: "cn-hangzhou-k"})
	defer f.Close()
	f.TokenMode = true
	f.Types["ecs.i4.large"] = cloud.InstanceType{LocalStorageAmount: 2, LocalStorageGiB: 1, LocalStorageCategory: "local_ssd_pro"}
	f.Disks = []cloud.FakeDisk{
		{ID: "d-e2essd", Category: "local_ssd_pro", InstanceID: "i-e2e", Serial: ssd.Backing, SizeGiB: 1},
		{ID: "d-e2ehdd", Category: "local_hdd_pro", InstanceID: "i-e2e", Serial: hdd.Backing, SizeGiB: 1},
	}
	e := newECSEnv(t, dir, []testutil.Loop{ssd, hdd, stranger}, f, nil)
	inv, drv, m := e.inv, e.drv, e.m

	if n := inv.ManagedDisks(); n != 2 {
		t.Fatalf("%d managed disks, want the 2 the cloud confirmed", n)
	}
	rec, _ := inv.Snapshot()
	if len(rec.Problems) != 1 || !strings.Contains(rec.Problems[0], stranger.Path) {
		t.Fatalf("problems %v; want the unknown device reported", rec.Problems)
	}
	for cat, want := range map[string]int64{"local_ssd_pro": 64 << 20, "local_hdd_pro": 64 << 20, "any": 128 << 20} {
		c, err := drv.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"diskCategory": cat}})
		if err != nil || c.AvailableCapacity != want {
			t.Fatalf("capacity %s: %v %v", cat, c, err)
		}
	}
	for cat, want := range map[string]testutil.Loop{"local_hdd_pro": hdd, "local_ssd_pro": ssd} {
		vc := testutil.MountCap("ext4")
		v := e.create("pvc-"+cat, vc, map[string]string{"diskCategory": cat})
		if v.VolumeContext["ecsDiskId"] != map[string]string{"local_hdd_pro": "d-e2ehdd", "local_ssd_pro": "d-e2essd"}[cat] || v.VolumeContext["diskCategory"] != cat ||
			v.VolumeContext["ecsInstanceId"] != "i-e2e" {
			t.Fatalf("volume context %v", v.VolumeContext)
		}
		staging, target := e.path("staging-"+cat), e.path("pod-"+cat)
		e.stage(v, vc, staging)
		if dev := e.device(v); dev != want.Path {
			t.Fatalf("%s volume on %s, want %s", cat, dev, want.Path)
		}
		e.publish(v, vc, staging, target, false)
		if err := os.WriteFile(filepath.Join(target, "f"), []byte(cat), 0o600); err != nil {
			t.Fatal(err)
		}
		e.unpublish(v, target)
		e.unstage(v, staging)
		e.delete(v)
	}
	if p, _ := m.Probe(ctx, stranger.Path); len(p.Signatures) != 0 {
		t.Fatalf("the device the cloud does not know was touched: %v", p.Signatures)
	}
	// The confirmed inventory was cached for a restart without the cloud.
	if _, err := os.Stat(filepath.Join(dir, "state", "ecs-inventory.json")); err != nil {
		t.Fatal(err)
	}
}

// newECSEnv is an env whose disks come through the ECS source, talking to
// the fake f with an access key from the environment.
func newECSEnv(t *testing.T, dir string, loops []testutil.Loop, f *cloud.Fake, fallback *cloud.Fallback) *env {
	t.Helper()
	creds, err := cloud.NewCredentialProvider(cloud.CredentialConfig{Getenv: func(k string) string {
		return map[string]string{"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIe2e", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "e2e-secret"}[k]
	}})
	if err != nil {
		t.Fatal(err)
	}
	api, err := cloud.NewAPI(cloud.APIConfig{Region: f.Instance.Region, Endpoint: f.API.URL, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, loops: loops, m: mounter.New()}
	e.newSource = func() disk.Source {
		devices, err := disk.NewStatic(disk.StaticConfig{Patterns: e.loopPaths(), Prober: e.m})
		if err != nil {
			t.Fatal(err)
		}
		src, err := cloud.NewSource(cloud.SourceConfig{Metadata: cloud.NewMetadata(f.Metadata.URL), API: api, Devices: devices,
			CachePath: cloud.CachePathIn(filepath.Join(dir, "state")), Fallback: fallback})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(src.Close)
		return src
	}
	t.Cleanup(e.unmountAll)
	e.start()
	return e
}
