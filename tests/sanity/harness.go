// Package sanity runs the csi-sanity conformance suite in-process against the
// driver's real gRPC server, on real loop-device disks, with the real mounter.
// The mount and block runs live in the sub-packages mount and block, because
// Ginkgo runs one suite per test binary.
package sanity

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/driver"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

const (
	// DiskSize is the size of every test disk and of TestVolumeSize: a
	// whole-disk driver returns exactly the disk's size, and csi-sanity's
	// "different capacity" spec wants exactly TestVolumeSize back.
	DiskSize = 64 << 20
	// Disks is how many loop devices back one run; csi-sanity keeps at most a
	// handful of volumes alive at once, and deleted disks need a moment to be
	// cleaned before they are free again.
	Disks = 12
	node  = "sanity-node"
)

// AllowedSkips maps each csi-sanity skip message this driver expects to the
// reason the skip is right. Any other skip fails the run.
var AllowedSkips = map[string]string{
	"Snapshot not supported":                                    "a local disk has no snapshot facility; CREATE_DELETE_SNAPSHOT is not advertised",
	"ListSnapshots not supported":                               "no snapshots (see above)",
	"GetSnapshot not supported":                                 "no snapshots (see above)",
	"DeleteSnapshot not supported":                              "no snapshots (see above)",
	"CreateSnapshot not supported":                              "no snapshots (see above)",
	"Volume Cloning not supported":                              "cloning would copy a whole disk; CLONE_VOLUME is not advertised",
	"Modify volume not supported":                               "a whole disk has no mutable parameters; MODIFY_VOLUME is not advertised",
	"Modify Volume not supported":                               "a whole disk has no mutable parameters; MODIFY_VOLUME is not advertised",
	"ControllerModifyVolume not supported":                      "a whole disk has no mutable parameters; MODIFY_VOLUME is not advertised",
	"ControllerPublishVolume not supported":                     "local disks need no attach step (CSIDriver attachRequired: false)",
	"ControllerPublishVolume.readonly field not supported":      "no controller publish (see above)",
	"Controller Publish, UnpublishVolume not supported":         "no controller publish (see above)",
	"ControllerUnpublishVolume not supported":                   "no controller publish (see above)",
	"ControllerExpandVolume not supported":                      "a volume is a whole physical disk and cannot grow",
	"NodeExpandVolume not supported":                            "a volume is a whole physical disk and cannot grow",
	"GroupControllerService not supported":                      "no group snapshots",
	"VolumeGroupSnapshots not supported":                        "no group snapshots",
	"Service does not have single node multi writer capability": "SINGLE_NODE_MULTI_WRITER is not advertised; Kubernetes maps ReadWriteOnce to SINGLE_NODE_WRITER",
}

// Run starts the driver on fresh loop devices and runs csi-sanity with the
// given access type ("mount" or "block").
func Run(t *testing.T, accessType string) {
	testutil.RequireRoot(t)
	// Ginkgo refuses -count above 1 with os.Exit, which skips every cleanup
	// and would leave the loop devices attached: refuse it before making any.
	if f := flag.Lookup("test.count"); f != nil && f.Value.String() != "1" {
		t.Fatalf("csi-sanity runs once per test binary: use -count=1, not -count=%s (repeat with a shell loop)", f.Value.String())
	}
	dir, err := os.MkdirTemp("", "sanity-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	logTo(t, filepath.Join(os.TempDir(), "sanity-"+accessType+".log"))
	var patterns []string
	for i := 0; i < Disks; i++ {
		patterns = append(patterns, testutil.NewLoop(t, dir, DiskSize).Path)
	}
	m := mounter.New()
	src, err := disk.NewStatic(disk.StaticConfig{Patterns: patterns, Prober: m})
	if err != nil {
		t.Fatal(err)
	}
	inv := inventory.New(inventory.Config{Node: node, Source: src, Store: state.NewStore(filepath.Join(dir, "state")), Mounter: m, RetryInterval: time.Second})
	if err := inv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	drv, err := driver.New(driver.Config{Name: "localdisk.csi.alibabacloud.com", Version: "sanity", NodeID: node, Inventory: inv, Mounter: m})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	lis, err := driver.Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := drv.NewServer()
	go srv.Serve(lis)
	// Cleanups run last-in first-out: stop serving, wait for cleaners,
	// unmount leftovers, then the loop devices are detached.
	t.Cleanup(func() { unmountUnder(t, dir) })
	t.Cleanup(func() { cleanersDone(t, inv) })
	t.Cleanup(srv.Stop)

	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeSize = DiskSize
	cfg.TestVolumeAccessType = accessType
	cfg.TestNodeVolumeAttachLimit = true
	cfg.IdempotentCount = 2
	sanity.Test(t, cfg)

	// After the suite every volume was deleted: every disk must come back
	// free and clean, and nothing may stay mounted.
	cleanersDone(t, inv)
	rec, excluded := inv.Snapshot()
	if len(excluded) != 0 {
		t.Errorf("disks excluded after the run: %+v", excluded)
	}
	free := 0
	for _, d := range rec.Disks {
		if d.Status == state.Free {
			free++
		} else {
			t.Errorf("disk %s left %s (%s)", d.ID, d.Status, d.Reason)
		}
	}
	if free != Disks {
		t.Errorf("%d of %d disks free after the run", free, Disks)
	}
	for _, p := range patterns {
		probe, err := m.Probe(context.Background(), p)
		if err != nil || len(probe.Signatures) != 0 {
			t.Errorf("disk %s not clean after the run: %v %v", p, probe.Signatures, err)
		}
	}
}

// logTo sends the driver's log to a file, so that the suite's report stays
// readable; the path is printed for a failed run.
func logTo(t *testing.T, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	klog.LogToStderr(false)
	klog.SetOutputBySeverity("INFO", f)
	t.Cleanup(func() {
		klog.Flush()
		klog.LogToStderr(true)
		f.Close()
		if t.Failed() {
			t.Logf("driver log: %s", path)
		}
	})
}

func cleanersDone(t *testing.T, inv *inventory.Inventory) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := inv.WaitIdle(ctx); err != nil {
		t.Errorf("cleaners still running: %v", err)
	}
}

// unmountUnder removes every mount below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	infos, err := mounter.New().MountInfo()
	if err != nil {
		t.Errorf("mountinfo: %v", err)
		return
	}
	var left []string
	for _, m := range infos {
		if strings.HasPrefix(m.MountPoint, dir+"/") {
			left = append(left, m.MountPoint)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(left)))
	for _, p := range left {
		t.Errorf("left mounted after the run: %s", p)
		_ = mounter.New().Unmount(p)
	}
}

// CheckSkips fails the suite for any skipped spec whose message is not in
// AllowedSkips, and prints each allowed skip with its reason.
func CheckSkips(report ginkgo.Report) {
	var unexpected []string
	counts := map[string]int{}
	for _, s := range report.SpecReports {
		if s.State != types.SpecStateSkipped || s.LeafNodeType != types.NodeTypeIt {
			continue
		}
		msg := strings.TrimSpace(s.Failure.Message)
		if _, ok := AllowedSkips[msg]; ok {
			counts[msg]++
			continue
		}
		unexpected = append(unexpected, fmt.Sprintf("%s: %q", s.FullText(), msg))
	}
	var msgs []string
	for m := range counts {
		msgs = append(msgs, m)
	}
	sort.Strings(msgs)
	for _, m := range msgs {
		fmt.Printf("sanity skip x%d %q: %s\n", counts[m], m, AllowedSkips[m])
	}
	if len(unexpected) > 0 {
		ginkgo.Fail("specs skipped without a written reason:\n" + strings.Join(unexpected, "\n"))
	}
}
