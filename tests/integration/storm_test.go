package integration

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/driver"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

var stormSeedFlag = flag.Int64("storm.seed", 0, "seed of TestNodeStorm; 0 takes STORM_SEED from the environment, else the clock")

// stormSeed returns the node storm's seed and logs it at the start and again
// at the end should the test fail. The seed fixes which calls each goroutine
// makes; the interleaving is the scheduler's.
func stormSeed(t *testing.T) uint64 {
	t.Helper()
	seed := *stormSeedFlag
	if seed == 0 {
		if v := os.Getenv("STORM_SEED"); v != "" {
			var err error
			if seed, err = strconv.ParseInt(v, 10, 64); err != nil {
				t.Fatalf("STORM_SEED=%q: %v", v, err)
			}
		}
	}
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	msg := fmt.Sprintf("storm seed %d (reproduce with -storm.seed=%d or STORM_SEED=%d)", seed, seed, seed)
	t.Log(msg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(msg)
		}
	})
	return uint64(seed)
}

// storm runs f(0) to f(n-1) in n goroutines released at the same moment and
// waits for all of them. Calls still running after limit fail the test with
// every goroutine's stack: a deadlock.
func storm(t testing.TB, n int, limit time.Duration, f func(i int)) {
	t.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			f(i)
		}()
	}
	close(start)
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(limit):
		buf := make([]byte, 4<<20)
		t.Fatalf("calls still running after %v (deadlock?):\n%s", limit, buf[:runtime.Stack(buf, true)])
	}
}

// loadState reads the env's state file back from disk.
func loadState(t testing.TB, e *env) *state.Record {
	t.Helper()
	rec, err := state.NewStore(e.path("state")).Load()
	if err != nil || rec == nil {
		t.Fatalf("loading the state file: %v (record %v)", err, rec)
	}
	return rec
}

// codeCounts renders how many errors had each code.
func codeCounts(errs []error) map[codes.Code]int {
	n := map[codes.Code]int{}
	for _, err := range errs {
		n[status.Code(err)]++
	}
	return n
}

// TestCreateStormDistinctNames sends 100 CreateVolume calls with distinct
// names at once to a node with 4 free disks: exactly 4 win, each its own
// disk, the 96 others get RESOURCE_EXHAUSTED, and the state file on disk
// records exactly the 4 winners.
func TestCreateStormDistinctNames(t *testing.T) {
	const calls, disks = 100, 4
	e := newEnv(t, []int64{32 << 20, 32 << 20, 32 << 20, 32 << 20}, nil)
	vc := testutil.BlockCap()
	name := func(i int) string { return fmt.Sprintf("pvc-storm-%03d", i) }
	vols := make([]*csi.Volume, calls)
	errs := make([]error, calls)
	start := time.Now()
	storm(t, calls, time.Minute, func(i int) {
		r, err := e.drv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name(i), VolumeCapabilities: []*csi.VolumeCapability{vc}})
		errs[i] = err
		if err == nil {
			vols[i] = r.Volume
		}
	})
	t.Logf("%d parallel CreateVolume calls took %v: %v", calls, time.Since(start), codeCounts(errs))

	won := map[string]int{} // disk ID -> index of the winning call
	devices := map[string]bool{}
	for i, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			d := vols[i].VolumeContext["disk"]
			if j, dup := won[d]; dup {
				t.Errorf("disk %s given to %s and %s", d, name(j), name(i))
			}
			won[d] = i
			devices[e.device(vols[i])] = true
		case codes.ResourceExhausted:
		default:
			t.Errorf("CreateVolume %s: %v, want OK or ResourceExhausted", name(i), err)
		}
	}
	if n := codeCounts(errs); n[codes.OK] != disks || n[codes.ResourceExhausted] != calls-disks {
		t.Fatalf("codes %v, want %d OK and %d ResourceExhausted", n, disks, calls-disks)
	}
	if len(won) != disks || len(devices) != disks {
		t.Fatalf("winners are on %d disk IDs and %d devices, want %d distinct of each", len(won), len(devices), disks)
	}

	rec := loadState(t, e)
	allocated := 0
	for id, d := range rec.Disks {
		i, ok := won[id]
		switch {
		case d.Status != state.Allocated:
			t.Errorf("state file: disk %s is %s, want allocated", id, d.Status)
		case !ok || d.Volume == nil:
			t.Errorf("state file: disk %s holds %+v, which no successful call returned", id, d.Volume)
		case d.Volume.ID != vols[i].VolumeId || d.Volume.Name != name(i):
			t.Errorf("state file: disk %s holds %s (%s), the call returned %s (%s)", id, d.Volume.ID, d.Volume.Name, vols[i].VolumeId, name(i))
		default:
			allocated++
		}
	}
	if allocated != disks || len(rec.Disks) != disks {
		t.Fatalf("state file: %d of %d disks allocated to the winners, want %d of %d", allocated, len(rec.Disks), disks, disks)
	}
	if c, err := e.drv.GetCapacity(context.Background(), &csi.GetCapacityRequest{}); err != nil || c.AvailableCapacity != 0 {
		t.Fatalf("capacity after the storm: %v %v, want 0 available", c, err)
	}
	// A winner's retry gets its volume again; a loser's retry is still refused.
	for d, i := range won {
		if again := e.create(name(i), vc, nil); again.VolumeId != vols[i].VolumeId {
			t.Fatalf("retry of %s (disk %s) got %s, want %s", name(i), d, again.VolumeId, vols[i].VolumeId)
		}
	}
	for i, err := range errs {
		if err != nil {
			_, err := e.drv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name(i), VolumeCapabilities: []*csi.VolumeCapability{vc}})
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("retry of losing %s: %v, want ResourceExhausted", name(i), err)
			}
			break
		}
	}
}

// TestCreateStormOneName sends 50 CreateVolume calls with one name at once,
// for one name after another until every disk is used: every call that
// succeeds returns the same volume on the same disk, the others get ABORTED,
// and each storm allocates exactly one disk, in memory and in the state file.
func TestCreateStormOneName(t *testing.T) {
	const calls, disks = 50, 4
	e := newEnv(t, []int64{32 << 20, 32 << 20, 32 << 20, 32 << 20}, nil)
	vc := testutil.MountCap("ext4")
	for round := 1; round <= disks; round++ {
		name := fmt.Sprintf("pvc-same-%d", round)
		vols := make([]*csi.Volume, calls)
		errs := make([]error, calls)
		start := time.Now()
		storm(t, calls, time.Minute, func(i int) {
			r, err := e.drv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{vc}})
			errs[i] = err
			if err == nil {
				vols[i] = r.Volume
			}
		})
		t.Logf("%s: %d parallel calls took %v: %v", name, calls, time.Since(start), codeCounts(errs))
		var first *csi.Volume
		for i, err := range errs {
			switch status.Code(err) {
			case codes.OK:
				if first == nil {
					first = vols[i]
				}
				if vols[i].VolumeId != first.VolumeId || vols[i].VolumeContext["disk"] != first.VolumeContext["disk"] {
					t.Fatalf("%s answered %s on %s and %s on %s", name, first.VolumeId, first.VolumeContext["disk"], vols[i].VolumeId, vols[i].VolumeContext["disk"])
				}
			case codes.Aborted:
			default:
				t.Fatalf("CreateVolume %s: %v, want OK or Aborted", name, err)
			}
		}
		if first == nil {
			t.Fatalf("no call for %s succeeded", name)
		}
		if again := e.create(name, vc, nil); again.VolumeId != first.VolumeId {
			t.Fatalf("retry of %s got %s, want %s", name, again.VolumeId, first.VolumeId)
		}
		for what, rec := range map[string]*state.Record{"state file": loadState(t, e), "inventory": snapshot(e)} {
			var holders []string
			mine := 0
			for id, d := range rec.Disks {
				if d.Status != state.Allocated {
					continue
				}
				holders = append(holders, d.Volume.Name)
				if d.Volume.Name == name {
					mine++
					if d.Volume.ID != first.VolumeId || id != first.VolumeContext["disk"] {
						t.Fatalf("%s: %s is %s on %s, the calls returned %s on %s", what, name, d.Volume.ID, id, first.VolumeId, first.VolumeContext["disk"])
					}
				}
			}
			if len(holders) != round || mine != 1 {
				t.Fatalf("%s after %d storms: allocated to %v, want each of the %d names once", what, round, holders, round)
			}
		}
	}
}

func snapshot(e *env) *state.Record {
	rec, _ := e.inv.Snapshot()
	return rec
}

// Bounds of TestNodeStorm.
const (
	stormRounds  = 20
	stormCap     = 60 * time.Second
	stormWorkers = 6  // goroutines per volume in each round
	stormOps     = 4  // calls each goroutine makes in a round
	stormRetries = 50 // attempts of one call while the answer is ABORTED
)

type nodeOp int

const (
	opStage nodeOp = iota
	opPublish
	opUnpublish
	opUnstage
)

func (o nodeOp) String() string {
	return [...]string{"NodeStage", "NodePublish", "NodeUnpublish", "NodeUnstage"}[o]
}

// stormVolume is one volume under a node storm, with its staging path and
// the targets it is published to.
type stormVolume struct {
	kind    string
	v       *csi.Volume
	vc      *csi.VolumeCapability
	staging string
	targets []string
	dev     string

	calls, ok, aborted, notStaged, gaveUp atomic.Int64
	mu                                    sync.Mutex
	wrong                                 []string
}

func (s *stormVolume) block() bool { return s.vc.GetBlock() != nil }

func (s *stormVolume) call(d *driver.Driver, op nodeOp, target string) error {
	ctx := context.Background()
	id := s.v.VolumeId
	var err error
	switch op {
	case opStage:
		_, err = d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: s.staging, VolumeCapability: s.vc, VolumeContext: s.v.VolumeContext})
	case opPublish:
		_, err = d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: s.staging, TargetPath: target, VolumeCapability: s.vc, VolumeContext: s.v.VolumeContext})
	case opUnpublish:
		_, err = d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	case opUnstage:
		_, err = d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: s.staging})
	}
	return err
}

// allowed says whether err is an answer the driver documents for op in some
// order of calls: OK, ABORTED while another call on the volume runs, and
// FAILED_PRECONDITION for a filesystem publish that comes before the stage.
func (s *stormVolume) allowed(op nodeOp, err error) bool {
	switch status.Code(err) {
	case codes.OK, codes.Aborted:
		return true
	case codes.FailedPrecondition:
		return op == opPublish && !s.block() && strings.Contains(err.Error(), "not staged")
	}
	return false
}

// worker makes stormOps random calls, each retried while it is ABORTED.
func (s *stormVolume) worker(d *driver.Driver, rng *rand.Rand) {
	for k := 0; k < stormOps; k++ {
		op, target := nodeOp(rng.IntN(4)), s.targets[rng.IntN(len(s.targets))]
		for attempt := 0; ; attempt++ {
			err := s.call(d, op, target)
			s.calls.Add(1)
			if !s.allowed(op, err) {
				s.mu.Lock()
				s.wrong = append(s.wrong, fmt.Sprintf("%s %s: %v", op, target, err))
				s.mu.Unlock()
				break
			}
			switch status.Code(err) {
			case codes.OK:
				s.ok.Add(1)
			case codes.FailedPrecondition:
				s.notStaged.Add(1)
			case codes.Aborted:
				s.aborted.Add(1)
				if attempt+1 < stormRetries {
					time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
					continue
				}
				s.gaveUp.Add(1)
			}
			break
		}
	}
}

// mountsAt returns the lines of /proc/self/mountinfo whose mount point is path.
func mountsAt(t testing.TB, path string) []string {
	t.Helper()
	return mountinfoLines(t, 4, path)
}

// check verifies the volume's paths after a round: no path is mounted more
// than once, every mount is of the volume's disk, a block volume's staging
// path is never mounted, and a block device whose publications are all
// read-write is not left read-only.
func (s *stormVolume) check(t *testing.T, e *env, round int) {
	t.Helper()
	want, err := e.m.DeviceNumber(s.dev)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append([]string{s.staging}, s.targets...) {
		lines := mountsAt(t, p)
		if len(lines) > 1 {
			t.Errorf("round %d, %s volume: %s is mounted %d times:\n%s", round, s.kind, p, len(lines), strings.Join(lines, "\n"))
		}
		if len(lines) == 0 {
			continue
		}
		switch {
		case s.block() && p == s.staging:
			t.Errorf("round %d: block staging path %s is mounted: %s", round, p, lines[0])
		case s.block():
			if got, err := e.m.DeviceNumber(p); err != nil || got != want {
				t.Errorf("round %d: %s is not the device node of %s: %v", round, p, s.dev, err)
			}
		default:
			if f := strings.Fields(lines[0]); f[2] != fmt.Sprintf("%d:%d", unix.Major(want), unix.Minor(want)) {
				t.Errorf("round %d: %s is a mount of %s, not of %s: %s", round, p, f[2], s.dev, lines[0])
			}
		}
	}
	if s.block() {
		ro, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(s.dev), "ro"))
		if err != nil || strings.TrimSpace(string(ro)) != "0" {
			t.Errorf("round %d: %s read-only flag %q (%v) with read-write publications only", round, s.dev, ro, err)
		}
	}
}

// TestNodeStorm runs NodeStage, NodePublish, NodeUnpublish and NodeUnstage
// from many goroutines at once on a filesystem volume and a block volume of
// one node, each published to two targets. Every call answers OK, ABORTED or
// (a filesystem publish before its stage) FAILED_PRECONDITION; after every
// round no staging or target path is mounted twice and every mount is of the
// volume's own disk; a final unpublish and unstage leave no mount and no
// target, and the disks can be deleted.
func TestNodeStorm(t *testing.T) {
	seed := stormSeed(t)
	e := newEnv(t, []int64{64 << 20, 64 << 20}, nil)
	var vols []*stormVolume
	for _, c := range []struct {
		kind string
		vc   *csi.VolumeCapability
	}{{"filesystem", testutil.MountCap("ext4")}, {"block", testutil.BlockCap()}} {
		v := e.create("pvc-"+c.kind, c.vc, nil)
		vols = append(vols, &stormVolume{
			kind: c.kind, v: v, vc: c.vc, dev: e.device(v),
			staging: e.path(c.kind + "/staging"),
			targets: []string{e.path(c.kind + "/pod-1/volume"), e.path(c.kind + "/pod-2/volume")},
		})
	}
	start := time.Now()
	rounds := 0
	for rounds < stormRounds && time.Since(start) < stormCap {
		storm(t, len(vols)*stormWorkers, stormCap, func(i int) {
			s := vols[i/stormWorkers]
			s.worker(e.drv, rand.New(rand.NewPCG(seed, uint64(rounds)<<16|uint64(i))))
		})
		rounds++
		for _, s := range vols {
			s.check(t, e, rounds)
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("%d rounds in %v", rounds, time.Since(start))
	for _, s := range vols {
		t.Logf("%s volume: %d calls: %d OK, %d ABORTED, %d FAILED_PRECONDITION (not staged), %d calls given up after %d ABORTED",
			s.kind, s.calls.Load(), s.ok.Load(), s.aborted.Load(), s.notStaged.Load(), s.gaveUp.Load(), stormRetries)
		if len(s.wrong) > 0 {
			t.Errorf("%s volume: %d calls answered a code outside OK, ABORTED and FAILED_PRECONDITION (not staged):\n%s", s.kind, len(s.wrong), strings.Join(s.wrong, "\n"))
		}
		if s.ok.Load() == 0 {
			t.Errorf("%s volume: no call succeeded", s.kind)
		}
	}
	for _, s := range vols {
		for _, target := range s.targets {
			e.unpublish(s.v, target) // checks that the target is gone
		}
		e.unstage(s.v, s.staging)
		for _, p := range append([]string{s.staging}, s.targets...) {
			if lines := mountsAt(t, p); len(lines) > 0 {
				t.Fatalf("%s still mounted after the final unpublish and unstage:\n%s", p, strings.Join(lines, "\n"))
			}
		}
		s.check(t, e, rounds+1)
		e.delete(s.v) // refused while any mount of the disk is left
	}
}

// watchedFormat is a mounter whose Format of one device closes started when
// it begins and finished when it returns, and runs mkfs only once release is
// closed.
type watchedFormat struct {
	mounter.Interface
	device            string
	started, finished chan struct{}
	release           chan struct{}
	once              sync.Once
	// begin and end are written before started and finished are closed.
	begin, end time.Time
}

// newWatchedFormat watches Format of device; with hold it waits for Release
// before running mkfs.
func newWatchedFormat(m mounter.Interface, device string, hold bool) *watchedFormat {
	w := &watchedFormat{Interface: m, device: device, started: make(chan struct{}), finished: make(chan struct{}), release: make(chan struct{})}
	if !hold {
		w.Release()
	}
	return w
}

// Release lets a held Format run mkfs.
func (w *watchedFormat) Release() { w.once.Do(func() { close(w.release) }) }

// Format formats device through the wrapped mounter; for the watched device
// it reports its start and end and waits for Release first. The watched
// device may be formatted once.
func (w *watchedFormat) Format(ctx context.Context, device, fsType, uuid string, sizeBytes int64, extraArgs []string) error {
	if device != w.device {
		return w.Interface.Format(ctx, device, fsType, uuid, sizeBytes, extraArgs)
	}
	w.begin = time.Now()
	close(w.started)
	defer func() {
		w.end = time.Now()
		close(w.finished)
	}()
	select {
	case <-w.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return w.Interface.Format(ctx, device, fsType, uuid, sizeBytes, extraArgs)
}

func stageErr(d *driver.Driver, v *csi.Volume, vc *csi.VolumeCapability, staging string) error {
	_, err := d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: vc, VolumeContext: v.VolumeContext})
	return err
}

func publishErr(d *driver.Driver, v *csi.Volume, vc *csi.VolumeCapability, staging, target string) error {
	_, err := d.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, VolumeContext: v.VolumeContext})
	return err
}

// await waits for ch or fails the test after limit.
func await[T any](t testing.TB, ch <-chan T, limit time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(limit):
		t.Fatalf("%s: not done after %v", what, limit)
	}
	var zero T
	return zero
}

// TestPublishDuringSlowFormat holds the format of disk A inside NodeStage
// and, meanwhile, stages and publishes a volume on disk B: B's calls finish
// while A's format is still held, and A's own calls are refused with ABORTED
// instead of waiting. Released, A's stage completes with a mounted
// filesystem.
func TestPublishDuringSlowFormat(t *testing.T) {
	e := newEnv(t, []int64{64 << 20, 64 << 20}, nil)
	vc := testutil.MountCap("ext4")
	a := e.create("pvc-slow", vc, nil)
	b := e.create("pvc-other", vc, nil)
	held := newWatchedFormat(e.m, e.device(a), true)
	e.useMounter(held)
	stagingA, stagingB, targetA, targetB := e.path("a/staging"), e.path("b/staging"), e.path("a/pod/volume"), e.path("b/pod/volume")

	var aErr error
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		aErr = stageErr(e.drv, a, vc, stagingA)
	}()
	// A's stage must have returned before the env unmounts everything.
	t.Cleanup(func() {
		held.Release()
		select {
		case <-aDone:
		case <-time.After(time.Minute):
			t.Errorf("A's stage still running a minute after release")
		}
	})
	await(t, held.started, 30*time.Second, "A's format to start")

	if err := publishErr(e.drv, a, vc, stagingA, targetA); status.Code(err) != codes.Aborted {
		t.Fatalf("NodePublish of A during its stage: %v, want Aborted", err)
	}
	if _, err := e.drv.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: a.VolumeId, StagingTargetPath: stagingA}); status.Code(err) != codes.Aborted {
		t.Fatalf("NodeUnstage of A during its stage: %v, want Aborted", err)
	}

	bDone := make(chan error, 1)
	begin := time.Now()
	go func() {
		err := stageErr(e.drv, b, vc, stagingB)
		if err == nil {
			err = publishErr(e.drv, b, vc, stagingB, targetB)
		}
		bDone <- err
	}()
	if err := await(t, bDone, 30*time.Second, "stage and publish of B while A's format is held"); err != nil {
		t.Fatalf("stage and publish of B: %v", err)
	}
	took := time.Since(begin)
	select {
	case <-held.finished:
		t.Fatal("A's format finished before B was published")
	case <-aDone:
		t.Fatalf("A's stage returned (%v) while its format was held", aErr)
	default:
	}
	if !strings.Contains(e.mountAt(targetB), " ext4 ") {
		t.Fatalf("B not published: %q", e.mountAt(targetB))
	}
	t.Logf("stage and publish of B while A's format was held: %v", took)

	held.Release()
	await(t, aDone, time.Minute, "A's stage after release")
	if aErr != nil {
		t.Fatalf("stage of A: %v", aErr)
	}
	if !held.end.After(begin.Add(took)) {
		t.Fatalf("A's format ended at %v, before B's publish returned", held.end)
	}
	if !strings.Contains(e.mountAt(stagingA), " ext4 ") {
		t.Fatalf("A not staged: %q", e.mountAt(stagingA))
	}
	e.publish(a, vc, stagingA, targetA, false)
	for _, x := range []struct {
		v               *csi.Volume
		staging, target string
	}{{a, stagingA, targetA}, {b, stagingB, targetB}} {
		e.unpublish(x.v, x.target)
		e.unstage(x.v, x.staging)
	}
}
