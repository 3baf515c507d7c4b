package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

const (
	testNode = "node-1"
	gib      = int64(1) << 30
)

// fixture is a driver on fake disks: disks[i] is /dev/fake<i>.
type fixture struct {
	t     testing.TB
	dir   string
	src   *disk.FakeSource
	m     *mounter.Fake
	inv   *inventory.Inventory
	d     *Driver
	disks []disk.Disk
	// refused records what the driver reported to Config.Refusals.
	refused *refusals
}

// refusals records the volumes reported refused.
type refusals struct {
	mu   sync.Mutex
	list []string
}

func (r *refusals) VolumeRefused(v inventory.Volume, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, v.ID+": "+reason)
}

func (r *refusals) VolumeAbnormal(v inventory.Volume, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, "abnormal "+v.ID+": "+reason)
}

func fakeDisk(i int, size int64, media disk.Media) disk.Disk {
	return disk.Disk{ID: fmt.Sprintf("serial-D%d", i), Identity: fmt.Sprintf("serial:D%d", i),
		Path: fmt.Sprintf("/dev/fake%d", i), Name: fmt.Sprintf("fake%d", i), SizeBytes: size, Media: media}
}

func newFixture(t testing.TB, disks ...disk.Disk) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: t.TempDir(), src: disk.NewFakeSource(disks...), m: mounter.NewFake(), disks: disks, refused: &refusals{}}
	for i, d := range disks {
		f.m.AddDevice(d.Path, d.SizeBytes, 253, uint32(i))
	}
	f.m.Stats = mounter.FSStats{TotalBytes: 100, UsedBytes: 10, AvailableBytes: 90, TotalInodes: 50, UsedInodes: 5, FreeInodes: 45}
	f.restart()
	return f
}

// restart builds a new inventory and driver over the same state and devices.
func (f *fixture) restart() {
	f.t.Helper()
	if f.inv != nil {
		f.inv.Stop()
	}
	f.inv = inventory.New(inventory.Config{Node: testNode, Source: f.src, Store: state.NewStore(filepath.Join(f.dir, "state")),
		Mounter: f.m, RetryInterval: 10 * time.Millisecond})
	var err error
	if f.d, err = New(Config{Name: "localdisk.csi.alibabacloud.com", Version: "t", NodeID: testNode, Inventory: f.inv, Mounter: f.m, Refusals: f.refused}); err != nil {
		f.t.Fatal(err)
	}
	if err := f.inv.Start(context.Background()); err != nil {
		f.t.Fatal(err)
	}
	inv := f.inv
	f.t.Cleanup(inv.Stop)
}

func createReq(name string, required, limit int64, params map[string]string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, Parameters: params, VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("")},
		CapacityRange: &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit}}
}

func (f *fixture) create(name string, required int64, params map[string]string) *csi.Volume {
	f.t.Helper()
	r, err := f.d.CreateVolume(context.Background(), createReq(name, required, 0, params))
	if err != nil {
		f.t.Fatalf("CreateVolume(%s): %v", name, err)
	}
	return r.Volume
}

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v; want code %s", err, code)
	}
	if contains != "" && !strings.Contains(status.Convert(err).Message(), contains) {
		t.Fatalf("message %q does not mention %q", status.Convert(err).Message(), contains)
	}
}

func (f *fixture) waitFree(diskID string) {
	f.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		rec, _ := f.inv.Snapshot()
		if d := rec.Disks[diskID]; d != nil && d.Status == state.Free {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	rec, _ := f.inv.Snapshot()
	f.t.Fatalf("disk %s not free: %+v", diskID, rec.Disks[diskID])
}

func TestCreateVolumeBestFitAndIdempotent(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 4*gib, disk.MediaSSD), fakeDisk(1, 2*gib, disk.MediaSSD), fakeDisk(2, 3*gib, disk.MediaHDD))
	v := f.create("pvc-a", gib, nil)
	if v.CapacityBytes != 2*gib || v.VolumeContext["disk"] != "serial-D1" {
		t.Fatalf("best fit picked %v", v)
	}
	if seg := v.AccessibleTopology[0].Segments; seg["topology.localdisk.csi.alibabacloud.com/node"] != testNode || len(seg) != 1 {
		t.Fatalf("topology %v", seg)
	}
	again := f.create("pvc-a", gib, nil)
	if again.VolumeId != v.VolumeId {
		t.Fatalf("retry got %s, want %s", again.VolumeId, v.VolumeId)
	}
	hdd := f.create("pvc-h", 0, map[string]string{ParamMedia: "hdd"})
	if hdd.VolumeContext["disk"] != "serial-D2" {
		t.Fatalf("media hdd got %v", hdd.VolumeContext)
	}
	// After a restart the same name still gets the same disk.
	f.restart()
	if again := f.create("pvc-a", gib, nil); again.VolumeId != v.VolumeId {
		t.Fatalf("after restart got %s, want %s", again.VolumeId, v.VolumeId)
	}
}

// TestCreateVolumeRecordsItsClaim: the PV and claim that the provisioner
// names (--extra-create-metadata) are recorded with the volume, for the
// operators' view; they are not class parameters.
func TestCreateVolumeRecordsItsClaim(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("pvc-1234", 0, map[string]string{"csi.storage.k8s.io/pv/name": "pvc-1234",
		"csi.storage.k8s.io/pvc/name": "data-web-0", "csi.storage.k8s.io/pvc/namespace": "shop"})
	rec, _ := f.inv.Snapshot()
	got := rec.Disks[v.VolumeContext["disk"]].Volume
	if got.PV != "pvc-1234" || got.ClaimName != "data-web-0" || got.ClaimNamespace != "shop" {
		t.Fatalf("recorded volume %+v", got)
	}
	for k := range got.Parameters {
		if strings.HasPrefix(k, "csi.storage.k8s.io/p") {
			t.Fatalf("claim metadata %s stored as a class parameter", k)
		}
	}
}

func TestCreateVolumeErrors(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 2*gib, disk.MediaSSD), fakeDisk(1, 4*gib, disk.MediaHDD))
	ctx := context.Background()
	multi := testutil.MountCap("")
	multi.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	other := &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{f.d.TopologyKey(): "node-2"}}}}
	mine := &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{f.d.TopologyKey(): testNode}}}}
	cases := []struct {
		name string
		req  *csi.CreateVolumeRequest
		code codes.Code
		msg  string
	}{
		{"no name", createReq("", 0, 0, nil), codes.InvalidArgument, "name"},
		{"long name", createReq(strings.Repeat("n", 200), 0, 0, nil), codes.InvalidArgument, "name"},
		{"no capabilities", &csi.CreateVolumeRequest{Name: "x"}, codes.InvalidArgument, "volume_capabilities"},
		{"bad parameter", createReq("x", 0, 0, map[string]string{"mediaa": "ssd"}), codes.InvalidArgument, "mediaa"},
		{"required over limit", createReq("x", 3*gib, gib, nil), codes.InvalidArgument, "capacity_range"},
		{"negative", createReq("x", -1, 0, nil), codes.InvalidArgument, "capacity_range"},
		{"multi-node", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{multi}}, codes.InvalidArgument, "access mode"},
		{"no access type", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{{AccessMode: multi.AccessMode}}}, codes.InvalidArgument, ""},
		{"fs conflict", &csi.CreateVolumeRequest{Name: "x", Parameters: map[string]string{ParamFSType: "xfs"}, VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("ext4")}}, codes.InvalidArgument, "conflicts"},
		{"bad mount flag", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("", "bind")}}, codes.InvalidArgument, "mount_flags"},
		{"xfs mkfs option on ext4", createReq("x", 0, 0, map[string]string{ParamMkfsOptions: "-K -f"}), codes.InvalidArgument, "-f"},
		{"content source", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("")}, VolumeContentSource: &csi.VolumeContentSource{}}, codes.InvalidArgument, "volume_content_source"},
		{"never fits", createReq("x", 5*gib, 0, nil), codes.ResourceExhausted, "no disk on this node can satisfy"},
		{"limit below every disk", createReq("x", 0, gib, nil), codes.ResourceExhausted, ""},
		{"no matching media fits", createReq("x", 3*gib, 0, map[string]string{ParamMedia: "ssd"}), codes.ResourceExhausted, ""},
		{"other node", &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("")}, AccessibilityRequirements: other}, codes.ResourceExhausted, "node-1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.d.CreateVolume(ctx, c.req)
			wantCode(t, err, c.code, c.msg)
		})
	}
	// Fill both disks, then: exhausted now, though one could fit later.
	if _, err := f.d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("")}, AccessibilityRequirements: mine}); err != nil {
		t.Fatal(err)
	}
	f.create("b", 0, nil)
	_, err := f.d.CreateVolume(ctx, createReq("c", 0, 0, nil))
	wantCode(t, err, codes.ResourceExhausted, "0 free")
	// Same name, incompatible request.
	_, err = f.d.CreateVolume(ctx, createReq("a", 3*gib, 0, nil))
	wantCode(t, err, codes.AlreadyExists, "range")
	_, err = f.d.CreateVolume(ctx, createReq("a", 0, 0, map[string]string{ParamCleanupPolicy: "zero"}))
	wantCode(t, err, codes.AlreadyExists, "parameters")
	// Nothing was allocated by the failed calls.
	vols, _ := f.inv.Volumes()
	if len(vols) != 2 {
		t.Fatalf("%d volumes, want 2", len(vols))
	}
}

func TestNotReadyAndBusy(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	inv := inventory.New(inventory.Config{Node: testNode, Source: f.src, Store: state.NewStore(t.TempDir()), Mounter: f.m})
	d, _ := New(Config{Name: "x.csi", NodeID: testNode, Inventory: inv, Mounter: f.m})
	r, err := d.Probe(context.Background(), &csi.ProbeRequest{})
	if err != nil || r.GetReady().GetValue() {
		t.Fatalf("probe before start: %v %v", r, err)
	}
	_, err = d.CreateVolume(context.Background(), createReq("x", 0, 0, nil))
	wantCode(t, err, codes.Unavailable, "not ready")

	release, err := f.d.locks.acquire("name/busy")
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.d.CreateVolume(context.Background(), createReq("busy", 0, 0, nil))
	wantCode(t, err, codes.Aborted, "in progress")
	release()
	f.create("busy", 0, nil)
}

func TestProbeReportsCorruptState(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	f.create("pvc", 0, nil)
	store := state.NewStore(filepath.Join(f.dir, "state"))
	for _, p := range []string{store.Path(), store.BackupPath()} {
		if err := os.WriteFile(p, []byte("{torn"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	inv := inventory.New(inventory.Config{Node: testNode, Source: f.src, Store: store, Mounter: f.m})
	d, _ := New(Config{Name: "x.csi", NodeID: testNode, Inventory: inv, Mounter: f.m})
	if err := inv.Start(context.Background()); err == nil {
		t.Fatal("start with a corrupt state file succeeded")
	}
	_, err := d.Probe(context.Background(), &csi.ProbeRequest{})
	wantCode(t, err, codes.FailedPrecondition, "corrupt")
	_, err = d.CreateVolume(context.Background(), createReq("new", 0, 0, nil))
	wantCode(t, err, codes.Unavailable, "")
}

// TestTornStateRecoversFromCopy: with the main state file torn, the
// driver starts from the copy and still knows every volume; the disk in
// use is not free.
func TestTornStateRecoversFromCopy(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD), fakeDisk(1, gib, disk.MediaSSD))
	v := f.create("pvc", 0, nil)
	store := state.NewStore(filepath.Join(f.dir, "state"))
	if err := os.WriteFile(store.Path(), []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	inv := inventory.New(inventory.Config{Node: testNode, Source: f.src, Store: store, Mounter: f.m})
	d, _ := New(Config{Name: "x.csi", NodeID: testNode, Inventory: inv, Mounter: f.m})
	if err := inv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer inv.Stop()
	ctx := context.Background()
	resp, err := d.CreateVolume(ctx, createReq("pvc", 0, 0, nil))
	if err != nil || resp.Volume.VolumeId != v.VolumeId {
		t.Fatalf("retry of pvc = %v, %v; want %s", resp, err, v.VolumeId)
	}
	c, err := d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil || c.AvailableCapacity != gib {
		t.Fatalf("capacity = %v, %v; want one free disk", c, err)
	}
}

func TestDeleteVolumeCleansThenFrees(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	ctx := context.Background()
	v := f.create("pvc", 0, map[string]string{ParamCleanupPolicy: "zero"})
	// A mounted volume is refused.
	staging := filepath.Join(f.dir, "staging")
	if _, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: testutil.MountCap("")}); err != nil {
		t.Fatal(err)
	}
	_, err := f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId})
	wantCode(t, err, codes.FailedPrecondition, "mounted")
	if _, err := f.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	// Block the wipe to observe the cleaning state.
	gate := make(chan struct{})
	f.m.Before = func(op, _ string) {
		if op == "wipe" {
			<-gate
		}
	}
	if _, err := f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
		t.Fatal(err)
	}
	c, _ := f.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if c.AvailableCapacity != 0 {
		t.Fatalf("capacity while cleaning: %d, want 0", c.AvailableCapacity)
	}
	_, err = f.d.CreateVolume(ctx, createReq("other", 0, 0, nil))
	wantCode(t, err, codes.ResourceExhausted, "")
	// Deleting again is fine; deleting garbage is fine.
	for _, id := range []string{v.VolumeId, "no-such-volume", "ld:node-1:serial-D9:0123456789ab"} {
		if _, err := f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("DeleteVolume(%s): %v", id, err)
		}
	}
	_, err = f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{})
	wantCode(t, err, codes.InvalidArgument, "volume_id")
	close(gate)
	f.waitFree("serial-D0")
	if calls := strings.Join(f.m.Calls(), ";"); !strings.Contains(calls, "wipe /dev/fake0 zero") {
		t.Fatalf("wipe with the volume's policy not called: %s", calls)
	}
	c, _ = f.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if c.AvailableCapacity != gib {
		t.Fatalf("capacity after cleaning: %d", c.AvailableCapacity)
	}
	// The old volume ID is gone for good, even though its disk is reused.
	again := f.create("pvc-2", 0, nil)
	if again.VolumeId == v.VolumeId {
		t.Fatal("a new volume on the same disk reused the old volume ID")
	}
	if _, err := f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.inv.Lookup(again.VolumeId); err != nil {
		t.Fatalf("deleting the old ID touched the new volume: %v", err)
	}
}

func TestFailedCleanupIsRetried(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("pvc", 0, nil)
	f.m.SetError("wipe", fmt.Errorf("wipefs: I/O error"))
	if _, err := f.d.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec, _ := f.inv.Snapshot()
		d := rec.Disks["serial-D0"]
		if d.Status == state.Failed && strings.Contains(d.Reason, "I/O error") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("disk not failed with reason: %+v", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, _ := f.d.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
	if c.AvailableCapacity != 0 {
		t.Fatal("failed disk counted as capacity")
	}
	f.m.SetError("wipe", nil)
	f.waitFree("serial-D0")
}

func TestGetCapacity(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD), fakeDisk(1, 3*gib, disk.MediaSSD), fakeDisk(2, 8*gib, disk.MediaHDD))
	ctx := context.Background()
	get := func(params map[string]string, seg map[string]string) (int64, int64) {
		t.Helper()
		var top *csi.Topology
		if seg != nil {
			top = &csi.Topology{Segments: seg}
		}
		r, err := f.d.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: params, AccessibleTopology: top})
		if err != nil {
			t.Fatal(err)
		}
		return r.AvailableCapacity, r.GetMaximumVolumeSize().GetValue()
	}
	if a, m := get(nil, nil); a != 12*gib || m != 8*gib {
		t.Fatalf("all: %d %d", a, m)
	}
	if a, m := get(map[string]string{ParamMedia: "ssd"}, map[string]string{f.d.TopologyKey(): testNode}); a != 4*gib || m != 3*gib {
		t.Fatalf("ssd: %d %d", a, m)
	}
	if a, _ := get(nil, map[string]string{f.d.TopologyKey(): "node-2"}); a != 0 {
		t.Fatalf("other node: %d", a)
	}
	f.create("v", 2*gib, map[string]string{ParamMedia: "ssd"})
	if a, m := get(map[string]string{ParamMedia: "ssd"}, nil); a != gib || m != gib {
		t.Fatalf("ssd after allocation: %d %d", a, m)
	}
	_, err := f.d.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{ParamMedia: "tape"}})
	wantCode(t, err, codes.InvalidArgument, "media")
}

func TestListVolumesPaging(t *testing.T) {
	var disks []disk.Disk
	for i := 0; i < 5; i++ {
		disks = append(disks, fakeDisk(i, gib, disk.MediaSSD))
	}
	f := newFixture(t, disks...)
	ctx := context.Background()
	want := map[string]bool{}
	for i := 0; i < 5; i++ {
		want[f.create(fmt.Sprintf("v%d", i), 0, nil).VolumeId] = true
	}
	got := map[string]bool{}
	token, pages := "", 0
	for {
		r, err := f.d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range r.Entries {
			got[e.Volume.VolumeId] = true
		}
		if token = r.NextToken; token == "" {
			break
		}
	}
	if pages != 3 || len(got) != 5 {
		t.Fatalf("%d pages, %d volumes", pages, len(got))
	}
	for id := range want {
		if !got[id] {
			t.Fatalf("volume %s not listed", id)
		}
	}
	_, err := f.d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "x"})
	wantCode(t, err, codes.Aborted, "starting_token")
	_, err = f.d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1})
	wantCode(t, err, codes.InvalidArgument, "max_entries")
}

func TestValidateVolumeCapabilities(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	ctx := context.Background()
	v := f.create("v", 0, nil)
	r, err := f.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.VolumeId, VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap(""), testutil.BlockCap()}})
	if err != nil || r.Confirmed == nil {
		t.Fatalf("confirm: %v %v", r, err)
	}
	multi := testutil.BlockCap()
	multi.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	r, err = f.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.VolumeId, VolumeCapabilities: []*csi.VolumeCapability{multi}})
	if err != nil || r.Confirmed != nil || r.Message == "" {
		t.Fatalf("multi-node confirmed: %v %v", r, err)
	}
	_, err = f.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "ld:node-1:serial-D0:0123456789ab", VolumeCapabilities: []*csi.VolumeCapability{testutil.BlockCap()}})
	wantCode(t, err, codes.NotFound, "")
	_, err = f.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.VolumeId})
	wantCode(t, err, codes.InvalidArgument, "volume_capabilities")
}

func TestNodeGetInfo(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD), fakeDisk(1, gib, disk.MediaSSD))
	f.create("v", 0, nil)
	r, err := f.d.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	if err != nil || r.NodeId != testNode || r.MaxVolumesPerNode != 2 || r.AccessibleTopology.Segments[f.d.TopologyKey()] != testNode {
		t.Fatalf("%v %v", r, err)
	}
}

// stageFS stages and publishes a filesystem volume; it returns the paths.
func (f *fixture) stageFS(v *csi.Volume, vc *csi.VolumeCapability) (string, string) {
	f.t.Helper()
	ctx := context.Background()
	staging, target := filepath.Join(f.dir, v.VolumeContext["disk"], "staging"), filepath.Join(f.dir, v.VolumeContext["disk"], "target")
	if _, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: vc, VolumeContext: v.VolumeContext}); err != nil {
		f.t.Fatalf("stage: %v", err)
	}
	if _, err := f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc}); err != nil {
		f.t.Fatalf("publish: %v", err)
	}
	return staging, target
}

func TestNodeStageFormatsOnlyBlankDisks(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("v", 0, map[string]string{ParamFSType: "xfs", ParamMkfsOptions: "-L data"})
	vc := testutil.MountCap("", "noatime")
	staging, target := f.stageFS(v, vc)
	f.stageFS(v, vc) // idempotent
	var formats []string
	for _, c := range f.m.Calls() {
		if strings.HasPrefix(c, "format") {
			formats = append(formats, c)
		}
	}
	if len(formats) != 1 || formats[0] != "format /dev/fake0 xfs [-L data]" {
		t.Fatalf("formats: %q", formats)
	}
	infos, _ := f.m.MountInfo()
	if len(infos) != 2 || infos[0].MountPoint != staging || !hasOpt(infos[0].MountOptions, "noatime") || infos[1].MountPoint != target {
		t.Fatalf("mounts: %+v", infos)
	}
	ctx := context.Background()
	if _, err := f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("target left behind: %v", err)
	}
	for i := 0; i < 2; i++ { // idempotent
		if _, err := f.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	if infos, _ := f.m.MountInfo(); len(infos) != 0 {
		t.Fatalf("mounts left: %+v", infos)
	}
}

func TestNodeStageRefusesForeignData(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("v", 0, nil)
	// Something else appeared on the allocated disk: never format over it.
	f.m.SetSignatures("/dev/fake0", disk.Probe{Signatures: []string{"xfs"}, FSType: "xfs"})
	_, err := f.d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: filepath.Join(f.dir, "s"), VolumeCapability: testutil.MountCap("ext4")})
	wantCode(t, err, codes.FailedPrecondition, "xfs")
	for _, c := range f.m.Calls() {
		if strings.HasPrefix(c, "format") || strings.HasPrefix(c, "mount") {
			t.Fatalf("touched the disk: %s", c)
		}
	}
	// The refusal is reported, for the events on the PV and the claim.
	if got := f.refused.list; len(got) != 1 || !strings.HasPrefix(got[0], v.VolumeId+": ") || !strings.Contains(got[0], "xfs") {
		t.Fatalf("refusals reported: %q", got)
	}
}

func TestNodeStageIdentityMismatch(t *testing.T) {
	d0, d1 := fakeDisk(0, gib, disk.MediaSSD), fakeDisk(1, gib, disk.MediaSSD)
	f := newFixture(t, d0, d1)
	v := f.create("v", 0, nil)
	if v.VolumeContext["disk"] != d0.ID {
		t.Fatalf("allocated %s", v.VolumeContext["disk"])
	}
	// After a "reboot" the volume's disk is gone and another disk sits at
	// its old path.
	swapped := d1
	swapped.Path = d0.Path
	f.src.Set(swapped)
	_, err := f.d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: filepath.Join(f.dir, "s"), VolumeCapability: testutil.MountCap("")})
	wantCode(t, err, codes.FailedPrecondition, "serial:D0")
	if !strings.Contains(err.Error(), "serial:D1") {
		t.Fatalf("message does not name the found identity: %v", err)
	}
	if got := f.refused.list; len(got) != 1 || !strings.Contains(got[0], "serial:D1") {
		t.Fatalf("refusals reported: %q", got)
	}
	// The disk renamed: found again by identity.
	renamed := d0
	renamed.Path = d1.Path
	f.src.Set(renamed, swapped)
	f.m.AddDevice(d1.Path, gib, 253, 7)
	f.m.AddDevice(d0.Path, gib, 253, 8)
	if _, err := f.d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: filepath.Join(f.dir, "s"), VolumeCapability: testutil.BlockCap()}); err != nil {
		t.Fatalf("stage after rename: %v", err)
	}
}

func TestNodeArgumentErrors(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	ctx := context.Background()
	v := f.create("v", 0, nil)
	p := filepath.Join(f.dir, "p")
	unknown := "ld:node-1:serial-D0:0123456789ab"
	check := func(name string, err error, code codes.Code, msg string) {
		t.Run(name, func(t *testing.T) { wantCode(t, err, code, msg) })
	}
	_, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{StagingTargetPath: p, VolumeCapability: testutil.MountCap("")})
	check("stage no id", err, codes.InvalidArgument, "volume_id")
	_, err = f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, VolumeCapability: testutil.MountCap("")})
	check("stage no path", err, codes.InvalidArgument, "staging_target_path")
	_, err = f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: p})
	check("stage no capability", err, codes.InvalidArgument, "volume_capability")
	_, err = f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: "rel/path", VolumeCapability: testutil.MountCap("")})
	check("stage relative", err, codes.InvalidArgument, "absolute")
	_, err = f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: p + "/../x", VolumeCapability: testutil.MountCap("")})
	check("stage dotdot", err, codes.InvalidArgument, "clean")
	_, err = f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: unknown, StagingTargetPath: p, VolumeCapability: testutil.MountCap("")})
	check("stage unknown", err, codes.NotFound, "")
	_, err = f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "garbage", StagingTargetPath: p, VolumeCapability: testutil.MountCap("")})
	check("stage garbage id", err, codes.NotFound, "")
	_, err = f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: p, VolumeCapability: testutil.MountCap("btrfs")})
	check("stage bad fs", err, codes.InvalidArgument, "btrfs")
	_, err = f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: unknown, TargetPath: p})
	check("publish nil capability", err, codes.InvalidArgument, "volume_capability")
	_, err = f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: p, VolumeCapability: testutil.MountCap("")})
	check("publish no staging", err, codes.InvalidArgument, "staging_target_path")
	_, err = f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: filepath.Join(f.dir, "s"), TargetPath: p, VolumeCapability: testutil.MountCap("")})
	check("publish not staged", err, codes.FailedPrecondition, "not staged")
	link := filepath.Join(f.dir, "link")
	os.Symlink("/etc", link)
	_, err = f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: filepath.Join(f.dir, "s"), TargetPath: link, VolumeCapability: testutil.BlockCap()})
	check("publish symlink", err, codes.InvalidArgument, "symbolic link")
	_, err = f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId})
	check("unpublish no path", err, codes.InvalidArgument, "target_path")
	_, err = f.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{StagingTargetPath: p})
	check("unstage no id", err, codes.InvalidArgument, "volume_id")
	_, err = f.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId})
	check("stats no path", err, codes.InvalidArgument, "volume_path")
	_, err = f.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: unknown, VolumePath: "some/path"})
	check("stats unknown", err, codes.NotFound, "")
	_, err = f.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: "some/path"})
	check("stats elsewhere", err, codes.NotFound, "")
}

// TestNodeStageConflict: staging a volume where another volume is staged
// is FAILED_PRECONDITION (the path holds something that is not this
// volume's), and the other volume's mount stays.
func TestNodeStageConflict(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD), fakeDisk(1, gib, disk.MediaSSD))
	a, b := f.create("a", 0, nil), f.create("b", 0, nil)
	staging, _ := f.stageFS(a, testutil.MountCap(""))
	_, err := f.d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: b.VolumeId, StagingTargetPath: staging, VolumeCapability: testutil.MountCap("")})
	wantCode(t, err, codes.FailedPrecondition, staging)
	if m, _ := f.d.mountAt(staging); m == nil {
		t.Fatal("the other volume's staging mount is gone")
	}
}

func TestVolumeStatsAndCondition(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	ctx := context.Background()
	v := f.create("v", 0, nil)
	_, target := f.stageFS(v, testutil.MountCap(""))
	r, err := f.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: target})
	if err != nil || r.Usage[0].Total != 100 || r.Usage[0].Available != 90 || r.Usage[1].Used != 5 || r.VolumeCondition.Abnormal {
		t.Fatalf("%v %v", r, err)
	}
	f.m.SetSuperReadOnly(target)
	r, _ = f.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: target})
	if !r.VolumeCondition.Abnormal || !strings.Contains(r.VolumeCondition.Message, "read-only") {
		t.Fatalf("condition %v", r.VolumeCondition)
	}
	// Told, for the events on the PV and the claim.
	if got := f.refused.list; len(got) != 1 || got[0] != "abnormal "+v.VolumeId+": "+r.VolumeCondition.Message {
		t.Fatalf("abnormal volumes reported: %q", got)
	}
	// ECS reports the disk damaged.
	if _, err := f.inv.SetDamaged("serial-D0", "ECS event e-7: Disk:ErrorDetected"); err != nil {
		t.Fatal(err)
	}
	r, err = f.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: target})
	if err != nil || !r.VolumeCondition.Abnormal || !strings.Contains(r.VolumeCondition.Message, "damaged: ECS event e-7") {
		t.Fatalf("damaged disk: %v %v", r, err)
	}
	if _, err := f.inv.SetDamaged("serial-D0", ""); err != nil {
		t.Fatal(err)
	}
	f.src.Set() // the disk vanished
	r, err = f.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: target})
	if err != nil || !r.VolumeCondition.Abnormal || !strings.Contains(r.VolumeCondition.Message, "not present") {
		t.Fatalf("missing disk: %v %v", r, err)
	}
}

// TestSlowFormatDoesNotBlockOtherDisks holds one disk's mkfs and checks that
// another volume can be created, staged and published meanwhile, and that a
// second call on the busy volume is refused with ABORTED.
func TestSlowFormatDoesNotBlockOtherDisks(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD), fakeDisk(1, gib, disk.MediaSSD))
	ctx := context.Background()
	slow, fast := f.create("slow", 0, nil), f.create("fast", 0, nil)
	entered, gate := make(chan struct{}), make(chan struct{})
	f.m.Before = func(op, arg string) {
		if op == "format" && arg == "/dev/fake0" {
			close(entered)
			<-gate
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.stageFS(slow, testutil.MountCap(""))
	}()
	<-entered
	_, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: slow.VolumeId, StagingTargetPath: filepath.Join(f.dir, "x"), VolumeCapability: testutil.MountCap("")})
	wantCode(t, err, codes.Aborted, "in progress")
	f.stageFS(fast, testutil.MountCap("")) // completes while disk 0 is still formatting
	if _, err := f.d.GetCapacity(ctx, &csi.GetCapacityRequest{}); err != nil {
		t.Fatal(err)
	}
	close(gate)
	wg.Wait()
}

// TestDeleteRefusesPublishedBlockVolume: a raw block publication is a bind
// mount of the device node, not a mount of the device; it must still stop
// DeleteVolume from wiping the disk.
func TestDeleteRefusesPublishedBlockVolume(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	ctx := context.Background()
	r, err := f.d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "b", VolumeCapabilities: []*csi.VolumeCapability{testutil.BlockCap()}})
	if err != nil {
		t.Fatal(err)
	}
	v := r.Volume
	staging, target := filepath.Join(f.dir, "s"), filepath.Join(f.dir, "pod", "dev")
	if _, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: testutil.BlockCap()}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: testutil.BlockCap(), Readonly: true}); err != nil {
		t.Fatal(err)
	}
	if dev, _ := f.m.Device("/dev/fake0"); !dev.ReadOnly {
		t.Fatal("read-only block publish left the device writable")
	}
	_, err = f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId})
	wantCode(t, err, codes.FailedPrecondition, target)
	if _, err := f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if dev, _ := f.m.Device("/dev/fake0"); dev.ReadOnly {
		t.Fatal("device still read-only after its last publication left")
	}
	if _, err := f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
		t.Fatal(err)
	}
	f.waitFree("serial-D0")
}

// TestCheckLostWaitsForTheVolumesCalls: a volume whose disk reads blank is
// found lost, but not while a CSI call holds it (a stage racing the
// check), and not while it is mounted.
func TestCheckLostWaitsForTheVolumesCalls(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	ctx := context.Background()
	v := f.create("v", 0, nil)
	staging, target := f.stageFS(v, testutil.MountCap(""))
	f.m.SetSignatures("/dev/fake0", disk.Probe{}) // blank under its mount
	if n, err := f.d.CheckLost(ctx); err != nil || n != 0 {
		t.Fatalf("mounted: %d lost, %v", n, err)
	}
	if _, err := f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	release, err := f.d.locks.acquire(v.VolumeId)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := f.d.CheckLost(ctx); err != nil || n != 0 {
		t.Fatalf("while a call holds the volume: %d lost, %v", n, err)
	}
	release()
	if n, err := f.d.CheckLost(ctx); err != nil || n != 1 {
		t.Fatalf("%d lost, %v; want 1", n, err)
	}
	got, err := f.inv.Lookup(v.VolumeId)
	if err != nil || got.Lost == "" {
		t.Fatalf("volume %+v %v", got.Volume, err)
	}
}
