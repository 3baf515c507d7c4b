// Package integration tests the driver's node and controller logic on real
// loop devices, real filesystems and real mounts. It needs root.
package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/driver"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

const node = "itest-node"

// env is one node: loop disks, the real mounter, an inventory and a driver.
type env struct {
	t     testing.TB
	dir   string
	loops []testutil.Loop
	m     *mounter.Real
	inv   *inventory.Inventory
	drv   *driver.Driver
	// newSource, when set, builds the disk source at each start; the default
	// is the static source over the loop devices.
	newSource func() disk.Source
	// mnt, when set, is the mounter of the inventory and the driver at each
	// start instead of m (a wrapper that watches or slows calls).
	mnt mounter.Interface
	// cleanupRate is the inventory's CleanupBytesPerSecond (0: no cap).
	cleanupRate int64
	// probeMaxAge is the inventory's ProbeMaxAge (0: its default).
	probeMaxAge time.Duration
}

// newEnv attaches one loop device per size and starts a driver on them.
// prepare, when set, runs on the loop devices before the driver starts.
func newEnv(t testing.TB, sizes []int64, prepare func([]testutil.Loop)) *env {
	t.Helper()
	testutil.RequireRoot(t)
	e := &env{t: t, dir: t.TempDir(), m: mounter.New()}
	for _, s := range sizes {
		e.loops = append(e.loops, testutil.NewLoop(t, e.dir, s))
	}
	if prepare != nil {
		prepare(e.loops)
	}
	t.Cleanup(e.unmountAll)
	e.start()
	return e
}

// start (re)starts the inventory and driver over the same devices and state,
// as a restarted process would.
func (e *env) start() {
	e.t.Helper()
	if e.inv != nil {
		e.inv.Stop()
	}
	var src disk.Source
	var err error
	if e.newSource != nil {
		src = e.newSource()
	} else if src, err = disk.NewStatic(disk.StaticConfig{Patterns: e.loopPaths(), Prober: e.m}); err != nil {
		e.t.Fatal(err)
	}
	m := e.mnt
	if m == nil {
		m = e.m
	}
	e.inv = inventory.New(inventory.Config{Node: node, Source: src, Store: state.NewStore(filepath.Join(e.dir, "state")), Mounter: m, RetryInterval: 200 * time.Millisecond,
		CleanupBytesPerSecond: e.cleanupRate, ProbeMaxAge: e.probeMaxAge})
	if err := e.inv.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	inv := e.inv
	e.t.Cleanup(inv.Stop)
	e.drv = e.newDriver(m)
}

// useMounter restarts the inventory and the driver over the same state with
// m as their mounter (nil: the real one).
func (e *env) useMounter(m mounter.Interface) {
	e.t.Helper()
	e.mnt = m
	e.start()
}

// newDriver returns a driver over the env's inventory that formats and
// mounts through m.
func (e *env) newDriver(m mounter.Interface) *driver.Driver {
	e.t.Helper()
	d, err := driver.New(driver.Config{Name: "localdisk.csi.alibabacloud.com", Version: "itest", NodeID: node, Inventory: e.inv, Mounter: m})
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *env) loopPaths() []string {
	var paths []string
	for _, l := range e.loops {
		paths = append(paths, l.Path)
	}
	return paths
}

// unmountAll undoes any mount left below the test directory.
func (e *env) unmountAll() {
	infos, _ := e.m.MountInfo()
	for i := len(infos) - 1; i >= 0; i-- {
		if strings.HasPrefix(infos[i].MountPoint, e.dir+"/") {
			_ = e.m.Unmount(infos[i].MountPoint)
		}
	}
}

func (e *env) path(p string) string { return filepath.Join(e.dir, p) }

func (e *env) create(name string, vc *csi.VolumeCapability, params map[string]string) *csi.Volume {
	e.t.Helper()
	r, err := e.drv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name, Parameters: params, VolumeCapabilities: []*csi.VolumeCapability{vc}})
	if err != nil {
		e.t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return r.Volume
}

func (e *env) stage(v *csi.Volume, vc *csi.VolumeCapability, staging string) {
	e.t.Helper()
	if _, err := e.drv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: vc, VolumeContext: v.VolumeContext}); err != nil {
		e.t.Fatalf("NodeStageVolume: %v", err)
	}
}

func (e *env) publish(v *csi.Volume, vc *csi.VolumeCapability, staging, target string, ro bool) {
	e.t.Helper()
	if _, err := e.drv.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, Readonly: ro, VolumeContext: v.VolumeContext}); err != nil {
		e.t.Fatalf("NodePublishVolume: %v", err)
	}
}

func (e *env) unpublish(v *csi.Volume, target string) {
	e.t.Helper()
	if _, err := e.drv.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
		e.t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		e.t.Fatalf("target %s still exists after unpublish: %v", target, err)
	}
}

func (e *env) unstage(v *csi.Volume, staging string) {
	e.t.Helper()
	if _, err := e.drv.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging}); err != nil {
		e.t.Fatalf("NodeUnstageVolume: %v", err)
	}
	if m := e.mountAt(staging); m != "" {
		e.t.Fatalf("staging %s still mounted: %s", staging, m)
	}
}

// delete deletes the volume and waits until its disk is clean and free.
func (e *env) delete(v *csi.Volume) {
	e.t.Helper()
	if _, err := e.drv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
		e.t.Fatalf("DeleteVolume: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.inv.WaitIdle(ctx); err != nil {
		e.t.Fatal(err)
	}
	rec, _ := e.inv.Snapshot()
	if d := rec.Disks[v.VolumeContext["disk"]]; d == nil || d.Status != state.Free {
		e.t.Fatalf("disk of %s not free after delete: %+v", v.VolumeId, d)
	}
}

// mountAt returns the mountinfo line of the mount at path, or "".
func (e *env) mountAt(path string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		e.t.Fatal(err)
	}
	found := ""
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			found = l
		}
	}
	return found
}

// device is the loop device holding a volume.
func (e *env) device(v *csi.Volume) string {
	e.t.Helper()
	vol, dev, err := e.inv.Device(context.Background(), v.VolumeId)
	if err != nil || vol.ID != v.VolumeId {
		e.t.Fatalf("device of %s: %v", v.VolumeId, err)
	}
	return dev
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// mountinfoLines returns the lines of /proc/self/mountinfo whose field
// (2: major:minor of the device, 4: mount point) is value.
func mountinfoLines(t testing.TB, field int, value string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[field] == value {
			out = append(out, l)
		}
	}
	return out
}
