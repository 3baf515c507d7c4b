package cloud

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

func dev(name, identity string, size int64) disk.Disk {
	return disk.Disk{ID: "x-" + name, Identity: identity, Path: "/dev/" + name, Name: name, SizeBytes: size, Media: disk.MediaSSD}
}

// ecsFixture: an instance with three local disks (two with devices: one by
// virtio serial, one by NVMe by-id link; the third missing), a system cloud
// disk with its device, an unknown extra device, and a disk of another
// instance.
func ecsFixture(t *testing.T) (*Fake, *disk.FakeSource) {
	f := newFake(t)
	f.Types[testInstance.Type] = InstanceType{LocalStorageAmount: 4, LocalStorageGiB: 1788, LocalStorageCategory: "local_ssd_pro"}
	f.Disks = []FakeDisk{
		{ID: "d-bp1aaa", Category: "local_ssd_pro", InstanceID: testInstance.ID, SizeGiB: 1788},
		{ID: "d-bp1bbb", Category: "local_hdd_pro", InstanceID: testInstance.ID, SizeGiB: 5500, Serial: "bp1bbb"},
		{ID: "d-bp1ccc", Category: "local_ssd_pro", InstanceID: testInstance.ID, SizeGiB: 1788},
		{ID: "d-bp1sys", Category: "cloud_essd", InstanceID: testInstance.ID, SizeGiB: 40},
		{ID: "d-bp1zzz", Category: "local_ssd_pro", InstanceID: "i-other", SizeGiB: 1788},
	}
	devices := disk.NewFakeSource(
		dev("vda", "serial:bp1sys", 40<<30),
		dev("vdb", "serial:bp1aaa", 1788<<30),
		dev("nvme0n1", "byid:nvme-Alibaba_Cloud_Local_Disk_bp1bbb", 5500<<30),
		dev("vdx", "serial:bp1unknown", 100<<30),
	)
	return f, devices
}

func newSource(t *testing.T, f *Fake, devices disk.Source, cache string) *Source {
	a := newAPI(t, f, nil)
	s, err := NewSource(SourceConfig{Metadata: NewMetadata(f.Metadata.URL), API: a, Devices: devices, CachePath: cache,
		DiscoverTimeout: 2 * time.Second, RetryInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestSourceMatchesBySerialAndReportsMismatches(t *testing.T) {
	f, devices := ecsFixture(t)
	s := newSource(t, f, devices, filepath.Join(t.TempDir(), "cache.json"))
	disks, problems, err := s.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 2 {
		t.Fatalf("disks %+v", disks)
	}
	a, b := disks[0], disks[1]
	if a.ID != "serial-bp1aaa" || a.Identity != "serial:bp1aaa" || a.CloudID != "d-bp1aaa" || a.Category != "local_ssd_pro" || a.Path != "/dev/vdb" || a.InstanceID != testInstance.ID {
		t.Errorf("virtio disk %+v", a)
	}
	if b.ID != "serial-bp1bbb" || b.CloudID != "d-bp1bbb" || b.Category != "local_hdd_pro" || b.Path != "/dev/nvme0n1" {
		t.Errorf("nvme disk %+v", b)
	}
	text := ""
	for _, p := range problems {
		text += p.Error() + "\n"
	}
	for _, want := range []string{"/dev/vdx (serial:bp1unknown) is not a local disk", "d-bp1ccc", "expects 4 local disks, ECS lists 3"} {
		if !strings.Contains(text, want) {
			t.Errorf("problems lack %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "vda") || strings.Contains(text, "bp1zzz") {
		t.Errorf("the system cloud disk or another instance's disk was reported:\n%s", text)
	}
	if len(problems) != 3 {
		t.Errorf("%d problems:\n%s", len(problems), text)
	}
	// Identify agrees with Discover, and the cloud is asked once per process.
	if id, identity, err := s.Identify(context.Background(), "/dev/nvme0n1"); err != nil || id != b.ID || identity != b.Identity {
		t.Errorf("Identify = %s %s %v", id, identity, err)
	}
	n := len(f.APICalls())
	s.Discover(context.Background())
	if len(f.APICalls()) != n {
		t.Errorf("rediscovery called the API again")
	}
}

func TestSourceUnreachableCloud(t *testing.T) {
	ctx := context.Background()
	cache := filepath.Join(t.TempDir(), "cache.json")
	f, devices := ecsFixture(t)
	// First run: the cloud answers and the inventory is cached.
	if disks, _, _ := newSource(t, f, devices, cache).Discover(ctx); len(disks) != 2 {
		t.Fatalf("%d disks", len(disks))
	}
	// Second run, cloud down: the cached, confirmed disks are served.
	f.SetFaults(-1, 0, 0, 0)
	s := newSource(t, f, devices, cache)
	disks, problems, err := s.Discover(ctx)
	if err != nil || len(disks) != 2 || disks[0].CloudID != "d-bp1aaa" {
		t.Fatalf("from cache: %+v %v", disks, err)
	}
	if !strings.Contains(problems[0].Error(), "serving the inventory it confirmed") {
		t.Fatalf("problems %v", problems)
	}
	// Third run, cloud down and no cache: nothing is served.
	s = newSource(t, f, devices, filepath.Join(t.TempDir(), "none.json"))
	disks, problems, _ = s.Discover(ctx)
	if len(disks) != 0 || !strings.Contains(problems[0].Error(), "no disk is served") {
		t.Fatalf("no cache: %+v %v", disks, problems)
	}
	// The cloud comes back: the background retry says so.
	f.SetFaults(0, 0, 0, 0)
	select {
	case <-s.Changed():
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled after the cloud came back")
	}
	if disks, _, _ := s.Discover(ctx); len(disks) != 2 {
		t.Fatalf("after recovery: %d disks", len(disks))
	}
}

// TestInventoryPicksUpDisksWhenCloudReturns: a node that started while the
// cloud was unreachable, with no cache, serves nothing, then its disks
// appear once the cloud answers.
func TestInventoryPicksUpDisksWhenCloudReturns(t *testing.T) {
	f, devices := ecsFixture(t)
	f.SetFaults(-1, 0, 0, 0)
	s := newSource(t, f, devices, filepath.Join(t.TempDir(), "cache.json"))
	m := mounter.NewFake()
	inv := inventory.New(inventory.Config{Node: "n1", Source: s, Store: state.NewStore(t.TempDir()), Mounter: m})
	if err := inv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer inv.Stop()
	rec, _ := inv.Snapshot()
	if len(rec.Disks) != 0 || len(rec.Problems) == 0 {
		t.Fatalf("before the cloud answered: %d disks, problems %v", len(rec.Disks), rec.Problems)
	}
	f.SetFaults(0, 0, 0, 0)
	deadline := time.Now().Add(10 * time.Second)
	for inv.ManagedDisks() != 2 {
		if time.Now().After(deadline) {
			t.Fatal("disks did not appear after the cloud answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	rec, _ = inv.Snapshot()
	if d := rec.Disks["serial-bp1aaa"]; d == nil || d.CloudID != "d-bp1aaa" || d.Category != "local_ssd_pro" {
		t.Fatalf("record %+v", d)
	}
}

func TestSerialOf(t *testing.T) {
	for identity, want := range map[string]string{
		"serial:bp1abc":                           "bp1abc",
		"byid:virtio-bp1abc":                      "bp1abc",
		"byid:nvme-Alibaba_Cloud_Local_Disk_bp1x": "bp1x",
		"byid:ata-SAMSUNG":                        "",
		"wwn:naa.5000":                            "",
		"loop:/var/lib/disk0.img":                 "/var/lib/disk0.img",
	} {
		if got := SerialOf(identity); got != want {
			t.Errorf("SerialOf(%q) = %q, want %q", identity, got, want)
		}
	}
}

// TestSourceAsksAgainWhenDisksChange: once ECS has replaced a damaged
// disk, the new device's serial is unknown to the last answer, so the
// cloud is asked again (no sooner than RecheckInterval) and the new disk
// is served. A device ECS will never list makes the rechecks space out.
func TestSourceAsksAgainWhenDisksChange(t *testing.T) {
	ctx := context.Background()
	f, devices := ecsFixture(t)
	a := newAPI(t, f, nil)
	s, err := NewSource(SourceConfig{Metadata: NewMetadata(f.Metadata.URL), API: a, Devices: devices, CachePath: filepath.Join(t.TempDir(), "c"),
		DiscoverTimeout: 2 * time.Second, RetryInterval: 20 * time.Millisecond, RecheckInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	describes := func() int {
		n := 0
		for _, c := range f.APICalls() {
			if c["Action"] == "DescribeDisks" {
				n++
			}
		}
		return n
	}
	ids := func() []string {
		t.Helper()
		disks, _, err := s.Discover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range disks {
			out = append(out, d.CloudID)
		}
		slices.Sort(out)
		return out
	}
	if got := ids(); !slices.Equal(got, []string{"d-bp1aaa", "d-bp1bbb"}) {
		t.Fatalf("disks %v", got)
	}
	// ECS replaces d-bp1aaa by d-bp1new, which has a new serial.
	f.Update(func(f *Fake) {
		for i := range f.Disks {
			if f.Disks[i].ID == "d-bp1aaa" {
				f.Disks[i] = FakeDisk{ID: "d-bp1new", Category: "local_ssd_pro", InstanceID: testInstance.ID, Serial: "bp1new", SizeGiB: 1788}
			}
		}
	})
	devices.Set(dev("vda", "serial:bp1sys", 40<<30), dev("vdb", "serial:bp1new", 1788<<30),
		dev("nvme0n1", "byid:nvme-Alibaba_Cloud_Local_Disk_bp1bbb", 5500<<30), dev("vdx", "serial:bp1unknown", 100<<30))
	before := describes()
	if got := ids(); !slices.Equal(got, []string{"d-bp1bbb"}) || describes() != before {
		t.Fatalf("within the recheck interval: disks %v, %d new calls", got, describes()-before)
	}
	time.Sleep(250 * time.Millisecond)
	if got := ids(); !slices.Equal(got, []string{"d-bp1bbb", "d-bp1new"}) {
		t.Fatalf("after the recheck: disks %v", got)
	}
	// vdx's serial is never listed: the next rechecks that change nothing
	// come after 200ms, then 400ms, then 800ms.
	time.Sleep(250 * time.Millisecond)
	ids()
	before = describes()
	time.Sleep(250 * time.Millisecond)
	if ids(); describes() != before {
		t.Fatal("a recheck that changed nothing did not space out the next one")
	}
}
