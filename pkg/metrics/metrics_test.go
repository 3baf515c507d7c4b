package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

type views []inventory.DiskView

func (v views) View() []inventory.DiskView { return v }

const gib = 1 << 30

// TestDiskMetrics: the disk metrics say what the view says: counts per
// status (every status present, zeroes included), managed and free bytes
// (a cordoned free disk is not free), cleanup progress per disk, and the
// age of the oldest cleaning and failed disk by the clock.
func TestDiskMetrics(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	v := views{
		{ID: "a", Media: "ssd", Category: "local_ssd_pro", SizeBytes: 100 * gib, Status: "free", Managed: true},
		{ID: "b", Media: "ssd", Category: "local_ssd_pro", SizeBytes: 100 * gib, Status: "free", Managed: true, Cordoned: true},
		{ID: "c", Media: "ssd", Category: "local_ssd_pro", SizeBytes: 100 * gib, Status: "allocated", Managed: true,
			Volume: &state.Volume{ID: "v1"}},
		{ID: "d", Media: "ssd", Category: "local_ssd_pro", SizeBytes: 100 * gib, Status: "cleaning", Managed: true, CleanupPolicy: "shred",
			Cleanup: &state.CleanupProgress{Pass: 1, Passes: 2, DoneBytes: 25 * gib, LengthBytes: 100 * gib}, UpdatedAt: now.Add(-90 * time.Second)},
		{ID: "e", Media: "hdd", Category: "local_hdd_pro", SizeBytes: 1000 * gib, Status: "failed", Managed: true, CleanupPolicy: "zero",
			UpdatedAt: now.Add(-time.Hour)},
		{ID: "f", Media: "hdd", Category: "local_hdd_pro", SizeBytes: 1000 * gib, Status: "allocated", Missing: true, Managed: true},
		{ID: "g", Media: "hdd", Category: "local_hdd_pro", SizeBytes: 1000 * gib, Status: "excluded", Reason: "carries xfs"},
		{ID: "h", Media: "hdd", Category: "local_hdd_pro", SizeBytes: 1000 * gib, Status: "cleaning", Managed: true, CleanupPolicy: "signatures",
			UpdatedAt: now.Add(-10 * time.Second)},
		{ID: "i", Media: "ssd", Category: "local_ssd_pro", SizeBytes: 100 * gib, Status: "free", Managed: true, Damaged: "ECS event e-1"},
	}
	m := New("n1")
	m.node.MustRegister(&diskCollector{snap: v, now: func() time.Time { return now }})
	want := `
# HELP localdisk_cleanup_done_bytes Bytes a zero or shred cleanup has written and synced so far (all passes), per disk.
# TYPE localdisk_cleanup_done_bytes gauge
localdisk_cleanup_done_bytes{disk="d",node="n1",policy="shred"} 1.34217728e+11
localdisk_cleanup_done_bytes{disk="e",node="n1",policy="zero"} 0
# HELP localdisk_cleanup_total_bytes Bytes a zero or shred cleanup writes in all (all passes), per disk.
# TYPE localdisk_cleanup_total_bytes gauge
localdisk_cleanup_total_bytes{disk="d",node="n1",policy="shred"} 2.147483648e+11
localdisk_cleanup_total_bytes{disk="e",node="n1",policy="zero"} 1.073741824e+12
# HELP localdisk_cordoned_disks Disks an operator cordoned (spec.cordoned of the LocalDisk), by media and category.
# TYPE localdisk_cordoned_disks gauge
localdisk_cordoned_disks{category="local_hdd_pro",media="hdd",node="n1"} 0
localdisk_cordoned_disks{category="local_ssd_pro",media="ssd",node="n1"} 1
# HELP localdisk_disks Disks the node driver knows, by status, media and ECS category.
# TYPE localdisk_disks gauge
localdisk_disks{category="local_hdd_pro",media="hdd",node="n1",status="allocated"} 0
localdisk_disks{category="local_hdd_pro",media="hdd",node="n1",status="cleaning"} 1
localdisk_disks{category="local_hdd_pro",media="hdd",node="n1",status="damaged"} 0
localdisk_disks{category="local_hdd_pro",media="hdd",node="n1",status="excluded"} 1
localdisk_disks{category="local_hdd_pro",media="hdd",node="n1",status="failed"} 1
localdisk_disks{category="local_hdd_pro",media="hdd",node="n1",status="free"} 0
localdisk_disks{category="local_hdd_pro",media="hdd",node="n1",status="missing"} 1
localdisk_disks{category="local_ssd_pro",media="ssd",node="n1",status="allocated"} 1
localdisk_disks{category="local_ssd_pro",media="ssd",node="n1",status="cleaning"} 1
localdisk_disks{category="local_ssd_pro",media="ssd",node="n1",status="damaged"} 1
localdisk_disks{category="local_ssd_pro",media="ssd",node="n1",status="excluded"} 0
localdisk_disks{category="local_ssd_pro",media="ssd",node="n1",status="failed"} 0
localdisk_disks{category="local_ssd_pro",media="ssd",node="n1",status="free"} 2
localdisk_disks{category="local_ssd_pro",media="ssd",node="n1",status="missing"} 0
# HELP localdisk_free_bytes Bytes of the disks that can be allocated now (free, present, not cordoned), by media and category.
# TYPE localdisk_free_bytes gauge
localdisk_free_bytes{category="local_hdd_pro",media="hdd",node="n1"} 0
localdisk_free_bytes{category="local_ssd_pro",media="ssd",node="n1"} 1.073741824e+11
# HELP localdisk_oldest_disk_in_status_seconds Age of the oldest status change among the disks in a status (cleaning, failed); 0 when none is.
# TYPE localdisk_oldest_disk_in_status_seconds gauge
localdisk_oldest_disk_in_status_seconds{node="n1",status="cleaning"} 90
localdisk_oldest_disk_in_status_seconds{node="n1",status="failed"} 3600
# HELP localdisk_total_bytes Bytes of the disks the driver manages (all but excluded ones), by media and category.
# TYPE localdisk_total_bytes gauge
localdisk_total_bytes{category="local_hdd_pro",media="hdd",node="n1"} 3.221225472e+12
localdisk_total_bytes{category="local_ssd_pro",media="ssd",node="n1"} 5.36870912e+11
`
	names := []string{"localdisk_cleanup_done_bytes", "localdisk_cleanup_total_bytes", "localdisk_cordoned_disks", "localdisk_disks",
		"localdisk_free_bytes", "localdisk_oldest_disk_in_status_seconds", "localdisk_total_bytes"}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	// With nothing cleaning or failed, the ages are 0.
	m2 := New("n1")
	m2.node.MustRegister(&diskCollector{snap: v[:3], now: func() time.Time { return now }})
	want2 := `
# HELP localdisk_oldest_disk_in_status_seconds Age of the oldest status change among the disks in a status (cleaning, failed); 0 when none is.
# TYPE localdisk_oldest_disk_in_status_seconds gauge
localdisk_oldest_disk_in_status_seconds{node="n1",status="cleaning"} 0
localdisk_oldest_disk_in_status_seconds{node="n1",status="failed"} 0
`
	if err := testutil.GatherAndCompare(m2.Registry(), strings.NewReader(want2), "localdisk_oldest_disk_in_status_seconds"); err != nil {
		t.Fatal(err)
	}
}

// TestCSIAndDeviceMetrics: the interceptor counts calls by method and
// gRPC code; the mounter wrapper times mkfs, mount and wipe by result;
// failed cleanups, ECS tries and state saves are counted.
func TestCSIAndDeviceMetrics(t *testing.T) {
	m := New("n1")
	icpt := m.UnaryInterceptor()
	call := func(method string, err error) {
		_, _ = icpt(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/" + method},
			func(context.Context, any) (any, error) { return nil, err })
	}
	call("CreateVolume", nil)
	call("CreateVolume", nil)
	call("CreateVolume", status.Error(codes.ResourceExhausted, "no disk"))
	call("DeleteVolume", errors.New("plain"))
	if n := testutil.ToFloat64(m.csiCalls.WithLabelValues("CreateVolume", "OK")); n != 2 {
		t.Errorf("CreateVolume OK: %v", n)
	}
	if n := testutil.ToFloat64(m.csiCalls.WithLabelValues("CreateVolume", "ResourceExhausted")); n != 1 {
		t.Errorf("CreateVolume ResourceExhausted: %v", n)
	}
	if n := testutil.ToFloat64(m.csiCalls.WithLabelValues("DeleteVolume", "Unknown")); n != 1 {
		t.Errorf("DeleteVolume Unknown: %v", n)
	}
	if n := testutil.CollectAndCount(m.csiSeconds); n != 3 {
		t.Errorf("%d latency series, want 3", n)
	}

	fake := mounter.NewFake()
	fake.AddDevice("/dev/x", gib, 8, 0)
	mnt := m.Mounter(fake)
	ctx := context.Background()
	if err := mnt.Format(ctx, "/dev/x", "xfs", "0b5e2c61-8f0e-4c3a-9f58-2f0d2c7e1a11", 0, nil); err != nil {
		t.Fatal(err)
	}
	fake.FailNext(mounter.OpWipe, errors.New("I/O error"))
	if err := mnt.Wipe(ctx, "/dev/x", mounter.CleanupZero, mounter.WipeOptions{}); err == nil {
		t.Fatal("injected wipe failure lost")
	}
	if err := mnt.Wipe(ctx, "/dev/x", mounter.CleanupZero, mounter.WipeOptions{}); err != nil {
		t.Fatal(err)
	}
	got := histogramCounts(t, m, "localdisk_device_operation_duration_seconds")
	want := map[string]uint64{"kind=xfs,node=n1,operation=mkfs,result=success": 1, "kind=zero,node=n1,operation=wipe,result=error": 1,
		"kind=zero,node=n1,operation=wipe,result=success": 1}
	if len(got) != len(want) {
		t.Errorf("device operations %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("device operations %v, want %v", got, want)
		}
	}
	m.CleanupFailed(state.Disk{CleanupPolicy: "zero"}, errors.New("x"))
	m.ECSRequest("DescribeDisks", "throttled")
	m.StateSaved(time.Millisecond, nil)
	if n := testutil.ToFloat64(m.cleanupFailures.WithLabelValues("zero")); n != 1 {
		t.Errorf("cleanup failures: %v", n)
	}
	if n := testutil.ToFloat64(m.ecsRequests.WithLabelValues("DescribeDisks", "throttled")); n != 1 {
		t.Errorf("ECS throttles: %v", n)
	}
	// A nil *Metrics records nothing and wraps nothing.
	var none *Metrics
	none.CleanupFailed(state.Disk{}, nil)
	none.StateSaved(0, nil)
	if none.Mounter(fake) != mounter.Interface(fake) || none.ECSRequestFunc() != nil {
		t.Fatal("nil metrics wrapped something")
	}
}

// histogramCounts gathers the histogram name and returns its sample count
// per label set ("k=v,k=v", sorted by key).
func histogramCounts(t *testing.T, m *Metrics, name string) map[string]uint64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, metric := range mf.GetMetric() {
			var labels []string
			for _, l := range metric.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			out[strings.Join(labels, ",")] = metric.GetHistogram().GetSampleCount()
		}
	}
	return out
}

// everySeries returns metrics with a series of every metric the driver
// exports.
func everySeries() *Metrics {
	m := New("n1")
	m.CollectDisks(views{{ID: "a", Media: "ssd", SizeBytes: gib, Status: "cleaning", Managed: true, CleanupPolicy: "zero"}})
	_, _ = m.UnaryInterceptor()(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/NodeStageVolume"},
		func(context.Context, any) (any, error) { return nil, nil })
	m.DeviceOperation("mkfs", "ext4", time.Second, nil)
	m.CleanupFailed(state.Disk{CleanupPolicy: "zero"}, errors.New("x"))
	m.ECSRequest("DescribeDisks", "success")
	m.StateSaved(time.Millisecond, nil)
	return m
}

// TestNamesFollowConventions: promlint finds nothing wrong with any metric
// the driver exports (names, units, help texts), with every kind of series
// present.
func TestNamesFollowConventions(t *testing.T) {
	m := everySeries()
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, Namespace+"_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

// TestServe: /metrics answers over HTTP with the node's disk metrics, and
// the server ends with its context.
func TestServe(t *testing.T) {
	m := New("n1")
	m.CollectDisks(views{{ID: "a", Media: "ssd", SizeBytes: gib, Status: "free", Managed: true}})
	ctx, cancel := context.WithCancel(context.Background())
	addr, err := m.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`localdisk_disks{category="",media="ssd",node="n1",status="free"} 1`, `localdisk_free_bytes{category="",media="ssd",node="n1"} 1.073741824e+09`, "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	cancel()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := http.Get("http://" + addr.String() + "/metrics"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("metrics server still answers 5s after its context ended")
		}
	}
	if _, err := m.Serve(context.Background(), addr.String()+"x"); err == nil {
		t.Fatal("a bad address was served")
	}
}

// TestDashboardUsesExportedMetrics: every metric the shipped Grafana
// dashboard queries is one the driver exports.
func TestDashboardUsesExportedMetrics(t *testing.T) {
	m := everySeries()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
	}
	b, err := os.ReadFile("../../deploy/grafana/ecs-localdisk-csi.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	used := 0
	name := regexp.MustCompile(`\blocaldisk_[a-z_]+`)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			for _, n := range name.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
				if !exported[base] {
					t.Errorf("panel %q queries %s, which the driver does not export", p.Title, n)
				}
				used++
			}
		}
	}
	if used < 10 {
		t.Fatalf("the dashboard queries only %d metrics", used)
	}
}
