// Package fault runs the real driver binary on real loop-device disks,
// drives random sequences of CSI calls and restarts, and kills the driver
// with SIGKILL at random points: at random instants, while it formats or
// wipes a disk, and at the crash points of its state writes. After every
// restart it checks that no disk belongs to two volumes, that every disk is
// free and blank, owned by a volume the harness knows, or being cleaned
// (and that cleaning resumes), that data written to published volumes is
// intact, and that retried calls converge.
//
// A third actor (actor_test.go) shares the node with the CO and the driver: it
// plants signatures on disks the driver believes free (and on disks being
// allocated or cleaned at that moment), bind-mounts device nodes of free
// disks, and mounts tmpfs filesystems at the CO's paths. The harness
// checks that the driver never wipes, formats, mounts over or unmounts
// anything it did not create, never gives a disk the actor uses to a new
// volume, and excludes such disks instead. It needs root.
package fault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/crashpoint"
	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

var (
	seedFlag  = flag.Uint64("fault.seed", 0, "seed of the operation sequence (0: from the clock); printed at the start and on failure")
	killsFlag = flag.Int("fault.kills", 200, "SIGKILLs to inject")
	timeFlag  = flag.Duration("fault.time", 15*time.Minute, "stop injecting after this long, whatever the kill count (0: no limit)")
	disksFlag = flag.Int("fault.disks", 4, "loop-device disks")
	// The contract is FAILED_PRECONDITION for a stage or publish onto a
	// path where something else is mounted; this flag tolerates (and
	// counts) ALREADY_EXISTS there, to run the other checks while a
	// driver still answers so.
)

const (
	nodeID   = "fault-node"
	diskSize = 320 << 20 // xfs needs 300 MiB
	callTime = 2 * time.Minute
)

// vol is the harness's view of a volume, as a CO would hold it: only what
// completed calls told it.
type vol struct {
	name, id       string // id is "" until a CreateVolume answered
	block          bool
	fsType, policy string
	staged         bool
	everStaged     bool // formatted, for a filesystem volume
	published      bool
	data           []byte // last bytes written through the publication
	deleting       bool   // a DeleteVolume was sent; the volume may be gone
	// spoiled: the actor's plant landed on the disk right after a racing
	// CreateVolume gave it to this volume; it can never be staged.
	spoiled bool
}

func (v *vol) staging(dir string) string { return filepath.Join(dir, "staging", v.name) }
func (v *vol) target(dir string) string  { return filepath.Join(dir, "pods", v.name, "target") }

type harness struct {
	t     *testing.T
	dir   string
	loops []testutil.Loop
	rnd   *rand.Rand
	seed  uint64
	drv   *driver
	runs  int
	vols  map[string]*vol
	names int
	kills map[string]int
	ops   map[string]int
	armed string // the crash point last armed; it stays armed until the next call
	act   *actor
}

func (h *harness) stateDir() string  { return filepath.Join(h.dir, "state") }
func (h *harness) crashFile() string { return filepath.Join(h.dir, "crashpoint") }

func (h *harness) totalKills() int {
	n := 0
	for _, k := range h.kills {
		n += k
	}
	return n
}

func (h *harness) fatalf(format string, args ...any) {
	h.t.Helper()
	log := ""
	if h.drv != nil {
		log = fmt.Sprintf("\nlast driver log (%s):\n%s", h.drv.log, tail(h.drv.log))
	}
	h.t.Fatalf("seed %d (rerun with -fault.seed=%d): %s%s", h.seed, h.seed, fmt.Sprintf(format, args...), log)
}

// TestCrashInjection is the harness: -fault.kills (default 200) SIGKILLs,
// each followed by a restart, the invariant checks and the retry of the
// interrupted call, then a teardown that must leave every disk free and
// blank.
func TestCrashInjection(t *testing.T) {
	testutil.RequireRoot(t)
	buildDriver(t)
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -fault.seed=%d)", seed, seed)
	h := &harness{t: t, dir: t.TempDir(), rnd: rand.New(rand.NewPCG(seed, seed^0x5eed)), seed: seed,
		vols: map[string]*vol{}, kills: map[string]int{}, ops: map[string]int{}, act: newActor()}
	for i := 0; i < *disksFlag; i++ {
		h.loops = append(h.loops, testutil.NewLoop(t, h.dir, diskSize))
	}
	t.Cleanup(h.cleanup)
	h.restart("")
	start := time.Now()
	steps := 0
	for h.totalKills() < *killsFlag && (*timeFlag == 0 || time.Since(start) < *timeFlag) && steps < 50**killsFlag {
		h.step()
		steps++
	}
	h.teardown()
	var kinds []string
	for k, n := range h.kills {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	var ops []string
	for k, n := range h.ops {
		ops = append(ops, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(ops)
	t.Logf("%d steps, %d driver runs, %d kills in %v: %s; calls: %s", steps, h.runs, h.totalKills(),
		time.Since(start).Round(time.Second), strings.Join(kinds, ", "), strings.Join(ops, ", "))
	var acts []string
	for k, n := range h.act.steps {
		acts = append(acts, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(acts)
	t.Logf("actor: %s", strings.Join(acts, ", "))
	if h.totalKills() < *killsFlag {
		t.Errorf("only %d of %d kills injected within %v", h.totalKills(), *killsFlag, *timeFlag)
	}
	// With enough kills, each kind of window must have been hit.
	if *killsFlag >= 100 {
		for _, kind := range []string{"during mkfs", "during wipefs|during blkdiscard|during shred", "crash point state-"} {
			n := 0
			for k, c := range h.kills {
				for _, alt := range strings.Split(kind, "|") {
					if strings.HasPrefix(k, alt) {
						n += c
					}
				}
			}
			if n == 0 {
				t.Errorf("no kill %s in %d kills (seed %d)", kind, h.totalKills(), seed)
			}
		}
	}
}

// cleanup kills a driver left running and undoes the mounts under the
// harness directory (the loop devices go with testutil's cleanup).
func (h *harness) cleanup() {
	if h.drv != nil && !h.drv.dead() {
		h.drv.kill()
	}
	h.actorCleanup()
	for i := 0; i < 3; i++ {
		for _, m := range h.mounts() {
			_ = exec.Command("umount", m).Run()
		}
	}
}

// restart starts the driver (again), retrying while a crash point kills it
// during start-up, then checks the invariants; inflight names the volume
// of an interrupted call.
func (h *harness) restart(inflight string) {
	h.t.Helper()
	h.act.resetTouched()
	for attempt := 0; ; attempt++ {
		err := h.start()
		if err == nil {
			break
		}
		if err != errDied || attempt > 5 {
			h.fatalf("starting the driver: %v", err)
		}
		h.kills["crash point "+h.armed+" during start-up"]++
		os.Remove(h.crashFile())
	}
	h.check(inflight)
	h.checkStarted()
}

// A call is one CSI request against a volume, retried as a CO would after
// an error that may be transient.
type call struct {
	kind string
	v    *vol
}

func (c call) name() string {
	if c.v == nil {
		return ""
	}
	return c.v.name
}

// step is one act of the actor (one in five), or a call, after which
// the plants that raced a wipe are settled and the actor's invariants
// checked.
func (h *harness) step() {
	h.t.Helper()
	h.reviveIfDead()
	if h.rnd.IntN(5) == 0 {
		h.actorStep()
	} else {
		h.callStep()
	}
	h.settle("")
	h.checkActor(h.readState(), false)
}

// callStep picks a call that is valid for the harness's view, arms a kill
// and runs it; a call the kill interrupted is retried after the restart.
func (h *harness) callStep() {
	h.t.Helper()
	c := h.pick()
	if c.kind == "restart" {
		h.ops["graceful restart"]++
		if err := h.drv.stop(); err != nil {
			h.fatalf("%v", err)
		}
		h.actorWhileDown("")
		h.restart("")
		return
	}
	if c.kind == "write" {
		h.write(c.v)
		return
	}
	h.ops[c.kind]++
	if c.kind == "capacity" {
		h.waitNoCleaning() // its answer is checked against the free disks
	}
	r := h.startRace(c)
	kill := h.arm(c)
	sent := time.Now()
	err := h.run(c)
	mode := kill()
	if r != nil {
		h.finishRace(r, sent)
	}
	if status.Code(err) == codes.Unavailable {
		// The connection broke: a crash point killed the driver, whose
		// exit may not have been reaped yet.
		select {
		case <-h.drv.exited:
		case <-time.After(5 * time.Second):
		}
	}
	if h.drv.dead() {
		if strings.Contains(tail(h.drv.log), "panic") {
			h.fatalf("the driver panicked")
		}
		if mode == "" {
			// Nothing of the harness killed it: the armed crash point did,
			// maybe in a background state write after its call.
			mode = "crash point " + h.armed
		}
		h.kills[mode]++
		os.Remove(h.crashFile())
		h.actorWhileDown(c.name())
		h.restart(c.name())
		// Decide the plants the restart's cleaners raced before the
		// retry can take a disk whose wipe legitimately took one; a
		// plant racing the interrupted delete waits for its retry.
		retrying := ""
		if c.kind == "delete" {
			retrying = c.name()
		}
		h.settle(retrying)
		if c.v != nil && h.vols[c.v.name] == nil {
			h.vols[c.v.name] = c.v // answered, then the driver died: the CO retries all the same
		}
		h.retry(c)
		h.check("")
	} else if err != nil {
		h.fatalf("%s %s with the driver up: %v", c.kind, c.name(), err)
	}
	if r != nil {
		h.afterRace(r)
	}
}

// pick chooses the next call from those valid in the harness's view.
func (h *harness) pick() call {
	var choices []call
	live := len(h.vols)
	for _, v := range h.sortedVols() {
		switch {
		case v.spoiled:
			choices = append(choices, call{"stage", v}, call{"delete", v})
		case v.published:
			choices = append(choices, call{"write", v}, call{"unpublish", v})
		case v.staged:
			choices = append(choices, call{"publish", v}, call{"publish", v}, call{"unstage", v})
		default:
			choices = append(choices, call{"stage", v}, call{"stage", v}, call{"delete", v})
		}
	}
	// Creates while disks are left, and now and then one too many (the
	// answer must then be RESOURCE_EXHAUSTED and allocate nothing).
	if live < len(h.loops) || h.rnd.IntN(8) == 0 {
		for i := 0; i < 3; i++ {
			choices = append(choices, call{"create", nil})
		}
	}
	if h.rnd.IntN(40) == 0 {
		return call{kind: "restart"}
	}
	if h.rnd.IntN(15) == 0 {
		return call{kind: "capacity"}
	}
	c := choices[h.rnd.IntN(len(choices))]
	if c.kind == "create" {
		h.names++
		c.v = &vol{name: fmt.Sprintf("vol-%04d", h.names), block: h.rnd.IntN(5) == 0,
			fsType: []string{"ext4", "xfs"}[h.rnd.IntN(2)], policy: []string{"signatures", "discard", "zero"}[h.rnd.IntN(3)]}
		h.vols[c.v.name] = c.v
	}
	return c
}

func (h *harness) sortedVols() []*vol {
	var out []*vol
	for _, name := range slices.Sorted(maps.Keys(h.vols)) {
		out = append(out, h.vols[name])
	}
	return out
}

// arm prepares a kill for the call: none, at a random instant, while a
// mkfs or wipe runs, or at a crash point of the state write. The returned
// function disarms it, waits for a kill under way to finish and names the
// kill that happened ("" for none; a crash point the caller tells from the
// driver's death).
func (h *harness) arm(c call) func() string {
	os.Remove(h.crashFile())
	d := h.drv
	done, finished := make(chan struct{}), make(chan struct{})
	var label string
	fire := func(l string) {
		label = l
		d.kill()
	}
	disarm := func() string {
		close(done)
		<-finished
		return label
	}
	r := h.rnd.IntN(10)
	if c.kind == "stage" && !c.v.everStaged && !c.v.block && r >= 2 {
		r = 5 // a first stage formats: kill during mkfs more often
	}
	switch {
	case r < 2:
		close(finished)
	case r < 5:
		delay := time.Duration(h.rnd.IntN(40000)) * time.Microsecond
		go func() {
			defer close(finished)
			select {
			case <-time.After(delay):
				fire("at a random instant")
			case <-done:
			}
		}()
	case r < 8 && (c.kind == "stage" || c.kind == "delete"):
		// mkfs runs inside NodeStage; the wipe runs in the background
		// right after DeleteVolume, so for a delete the watch goes on
		// after the call returned.
		// (NodeStage also runs wipefs, read-only, to probe the disk.)
		tools := map[string]bool{"mkfs.ext4": true, "mkfs.xfs": true, "mke2fs": true}
		if c.kind == "delete" {
			tools = map[string]bool{"wipefs": true, "blkdiscard": true, "shred": true}
		}
		go func() {
			defer close(finished)
			deadline := time.After(1500 * time.Millisecond)
			for {
				for _, p := range groupProcesses(d.cmd.Process.Pid) {
					if tools[p] {
						fire("during " + p)
						return
					}
				}
				select {
				case <-deadline:
					return
				case <-done:
					if c.kind != "delete" {
						return
					}
				default:
				}
				time.Sleep(time.Millisecond)
			}
		}()
	default:
		close(finished)
		points := []string{crashpoint.StateTempWritten, crashpoint.StateTempSynced, crashpoint.StateRenamed}
		h.armed = points[h.rnd.IntN(len(points))]
		if err := os.WriteFile(h.crashFile(), []byte(h.armed), 0o644); err != nil {
			h.fatalf("%v", err)
		}
	}
	return disarm
}

// run sends the call once. An error is returned only when the call failed
// otherwise than the harness's view allows. A call that the actor's tmpfs
// at its path, or the actor's plant on the volume's disk, must make fail
// is expected to answer FAILED_PRECONDITION and changes nothing.
func (h *harness) run(c call) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTime)
	defer cancel()
	v := c.v
	d := h.drv
	if why := h.refusal(c); why != "" {
		err := h.nodeCall(ctx, c)
		switch status.Code(err) {
		case codes.FailedPrecondition:
			if v.spoiled && c.kind == "stage" {
				h.act.steps["refused stage on a planted disk"]++
			} else {
				h.act.steps["refused "+c.kind+" onto a tmpfs"]++
			}
			return nil
		case codes.OK:
			return fmt.Errorf("%s of %s succeeded though %s", c.kind, v.name, why)
		}
		return fmt.Errorf("%s of %s, though %s: %w", c.kind, v.name, why, err)
	}
	switch c.kind {
	case "capacity":
		resp, err := d.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("ext4")},
			Parameters: map[string]string{"cleanupPolicy": "signatures", "csi.storage.k8s.io/fstype": "ext4"}})
		if err != nil {
			return err
		}
		return h.checkCapacity(resp)
	case "create":
		resp, err := d.ctrl.CreateVolume(ctx, h.createRequest(v))
		switch status.Code(err) {
		case codes.OK:
			if v.id != "" && v.id != resp.GetVolume().GetVolumeId() {
				return fmt.Errorf("CreateVolume %s answered %s, earlier %s", v.name, resp.GetVolume().GetVolumeId(), v.id)
			}
			v.id = resp.GetVolume().GetVolumeId()
			return nil
		case codes.ResourceExhausted:
			if v.id != "" {
				return fmt.Errorf("CreateVolume %s: RESOURCE_EXHAUSTED after it answered %s", v.name, v.id)
			}
			delete(h.vols, v.name) // the CO would try another node
			return nil
		}
		return err
	case "delete":
		v.deleting = true
		if _, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
			return err
		}
		if h.vols[v.name] != nil {
			h.act.deleted = append(h.act.deleted, v.id)
		}
		delete(h.vols, v.name)
		return nil
	case "stage":
		_, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id,
			StagingTargetPath: v.staging(h.dir), VolumeCapability: capability(v)})
		if err == nil {
			v.staged, v.everStaged = true, true
		}
		return err
	case "publish":
		if err := os.MkdirAll(filepath.Dir(v.target(h.dir)), 0o750); err != nil {
			return err
		}
		_, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id,
			StagingTargetPath: v.staging(h.dir), TargetPath: v.target(h.dir), VolumeCapability: capability(v)})
		if err != nil {
			return err
		}
		v.published = true
		h.verifyData(v)
		return nil
	case "unpublish":
		if _, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target(h.dir)}); err != nil {
			return err
		}
		v.published = false
		if _, err := os.Lstat(v.target(h.dir)); err == nil {
			return fmt.Errorf("NodeUnpublish %s left %s behind", v.name, v.target(h.dir))
		}
		return nil
	case "unstage":
		if _, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging(h.dir)}); err != nil {
			return err
		}
		v.staged = false
		return nil
	}
	return fmt.Errorf("unknown call %q", c.kind)
}

// refusal says why call c must fail with FAILED_PRECONDITION, "" when it
// must not: the actor's tmpfs is mounted at the path the call acts on, or
// the volume is spoiled (its disk carries the actor's plant).
func (h *harness) refusal(c call) string {
	if c.v == nil {
		return ""
	}
	if c.kind == "stage" && c.v.spoiled {
		return "its disk carries the actor's plant"
	}
	if path := h.callPath(c); path != "" && h.act.mounts[path] != nil {
		return "the actor's tmpfs is mounted at " + filepath.Base(filepath.Dir(path)) + "/" + filepath.Base(path)
	}
	return ""
}

// callPath is the path a node call mounts or unmounts ("" for none; a
// block volume's stage mounts nothing).
func (h *harness) callPath(c call) string {
	switch {
	case c.v == nil:
	case c.kind == "stage" && !c.v.block, c.kind == "unstage":
		return c.v.staging(h.dir)
	case c.kind == "publish", c.kind == "unpublish":
		return c.v.target(h.dir)
	}
	return ""
}

// nodeCall sends the node call c as run does, without changing the view.
func (h *harness) nodeCall(ctx context.Context, c call) error {
	v, node := c.v, h.drv.node
	var err error
	switch c.kind {
	case "stage":
		_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id,
			StagingTargetPath: v.staging(h.dir), VolumeCapability: capability(v)})
	case "publish":
		if err := os.MkdirAll(filepath.Dir(v.target(h.dir)), 0o750); err != nil {
			return err
		}
		_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id,
			StagingTargetPath: v.staging(h.dir), TargetPath: v.target(h.dir), VolumeCapability: capability(v)})
	case "unpublish":
		_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target(h.dir)})
	case "unstage":
		_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging(h.dir)})
	default:
		return fmt.Errorf("no node call %q", c.kind)
	}
	return err
}

// checkCapacity checks a GetCapacity answer, given while no disk was
// being cleaned: it counts exactly the disks the state calls free, and
// none of them carries a plant of the actor or is bound by it (GetCapacity
// looks at every free disk and excludes those).
func (h *harness) checkCapacity(resp *csi.GetCapacityResponse) error {
	rec := h.readState()
	var avail, largest int64
	for _, id := range slices.Sorted(maps.Keys(rec.Disks)) {
		d := rec.Disks[id]
		if d.Status != state.Free {
			continue
		}
		if p, b := h.act.plants[id], h.act.binds[id]; p != nil || b != nil {
			return fmt.Errorf("GetCapacity counted disk %s as free though the actor has %s on it", id, describe(p, b))
		}
		avail += d.SizeBytes
		largest = max(largest, d.SizeBytes)
	}
	if resp.GetAvailableCapacity() != avail || resp.GetMaximumVolumeSize().GetValue() != largest {
		return fmt.Errorf("GetCapacity answered available %d, maximum %d; the free disks make %d and %d",
			resp.GetAvailableCapacity(), resp.GetMaximumVolumeSize().GetValue(), avail, largest)
	}
	return nil
}

// retry repeats an interrupted call until it succeeds, as a CO does: the
// calls are idempotent, so each retry must converge.
func (h *harness) retry(c call) {
	h.t.Helper()
	for attempt := 0; ; attempt++ {
		err := h.run(c)
		if err == nil {
			return
		}
		if attempt >= 20 || status.Code(err) != codes.Aborted {
			h.fatalf("retrying %s of %s after a crash (attempt %d): %v", c.kind, c.name(), attempt+1, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *harness) createRequest(v *vol) *csi.CreateVolumeRequest {
	params := map[string]string{"cleanupPolicy": v.policy}
	if !v.block {
		params["csi.storage.k8s.io/fstype"] = v.fsType
	}
	return &csi.CreateVolumeRequest{Name: v.name, VolumeCapabilities: []*csi.VolumeCapability{capability(v)},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 100 << 20}, Parameters: params}
}

func capability(v *vol) *csi.VolumeCapability {
	if v.block {
		return testutil.BlockCap()
	}
	return testutil.MountCap(v.fsType)
}

// write puts fresh bytes on a published volume through its publication
// and syncs them: a file for a filesystem, the first bytes of the device
// for a block volume.
func (h *harness) write(v *vol) {
	h.t.Helper()
	h.ops["write"]++
	data := make([]byte, 4096+h.rnd.IntN(60000))
	for i := range data {
		data[i] = byte(h.rnd.Uint32())
	}
	path := v.target(h.dir)
	flags := os.O_WRONLY
	if !v.block {
		path = filepath.Join(path, "data")
		flags |= os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		h.fatalf("writing to %s: %v", v.name, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		h.fatalf("writing to %s: %v", v.name, err)
	}
	v.data = data
}

// verifyData reads back what was last written to a published volume.
func (h *harness) verifyData(v *vol) {
	h.t.Helper()
	if v.data == nil {
		return
	}
	path := v.target(h.dir)
	var got []byte
	if v.block {
		f, err := os.Open(path)
		if err != nil {
			h.fatalf("reading %s: %v", v.name, err)
		}
		got = make([]byte, len(v.data))
		_, err = f.ReadAt(got, 0)
		f.Close()
		if err != nil {
			h.fatalf("reading %s: %v", v.name, err)
		}
	} else {
		var err error
		if got, err = os.ReadFile(filepath.Join(path, "data")); err != nil {
			h.fatalf("reading %s: %v", v.name, err)
		}
	}
	if !bytes.Equal(got, v.data) {
		h.fatalf("volume %s: data read back (sha256 %x) is not what was written (sha256 %x)", v.name, sha256.Sum256(got), sha256.Sum256(v.data))
	}
}

// check verifies the invariants against the state file, the devices and
// the mounts. inflight names the volume whose call was interrupted: its
// mounts may be either way until the call is retried.
func (h *harness) check(inflight string) {
	h.t.Helper()
	rec := h.readState()
	owner := map[string]string{} // volume ID -> disk ID
	byName := map[string]*state.Disk{}
	for _, id := range slices.Sorted(maps.Keys(rec.Disks)) {
		d := rec.Disks[id]
		switch d.Status {
		case state.Allocated, state.Cleaning:
			if d.Volume == nil {
				h.fatalf("disk %s is %s without a volume", id, d.Status)
			}
			if other, dup := owner[d.Volume.ID]; dup {
				h.fatalf("volume %s owns two disks: %s and %s", d.Volume.ID, other, id)
			}
			owner[d.Volume.ID] = id
		case state.Free, state.Excluded: // checkActor: only disks the actor uses are excluded
		case state.Failed:
			if !h.act.unsettled(id) { // a wipe that a plant raced may fail; settle restarts it
				h.fatalf("disk %s failed: %s", id, d.Reason)
			}
		default:
			h.fatalf("disk %s has status %q", id, d.Status)
		}
		if d.Status != state.Allocated {
			continue
		}
		v := h.vols[d.Volume.Name]
		if v == nil {
			h.fatalf("disk %s is allocated to %s (%s), a volume the harness never asked for or deleted", id, d.Volume.Name, d.Volume.ID)
		}
		if v.id != "" && v.id != d.Volume.ID {
			h.fatalf("disk %s holds %s as %s; the driver answered %s", id, v.name, d.Volume.ID, v.id)
		}
		if prev := byName[v.name]; prev != nil {
			h.fatalf("volume name %s owns disks %s and %s", v.name, prev.ID, id)
		}
		byName[v.name] = d
	}
	for _, v := range h.sortedVols() {
		if v.id == "" || v.deleting {
			continue
		}
		if byName[v.name] == nil || byName[v.name].Volume.ID != v.id {
			h.fatalf("volume %s (%s), created and not deleted, owns no disk", v.name, v.id)
		}
	}
	h.checkMounts(inflight)
	h.waitCleaned()
	h.checkActor(h.readState(), true)
}

func (h *harness) readState() *state.Record {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.stateDir(), "state.json"))
	if err != nil {
		h.fatalf("reading the state file: %v", err)
	}
	rec, err := state.Decode(b)
	if err != nil {
		h.fatalf("state file after a crash: %v", err)
	}
	return rec
}

// checkMounts: every path under the harness directory is mounted at most
// once; a published volume's target and a staged filesystem volume's
// staging path are mounted, others are not (the interrupted call's
// volume aside), not counting the actor's mounts; published data is
// intact.
func (h *harness) checkMounts(inflight string) {
	h.t.Helper()
	all, seen := map[string]int{}, map[string]int{}
	for _, mi := range h.mountInfos() {
		m := mi.MountPoint
		if !strings.HasPrefix(m, h.dir+"/") {
			continue
		}
		all[m]++
		if all[m] > 1 {
			h.fatalf("%s is mounted %d times", m, all[m])
		}
		if !h.isActorMount(mi) {
			seen[m]++
		}
	}
	for _, v := range h.sortedVols() {
		if v.name == inflight {
			continue
		}
		if got := seen[v.target(h.dir)] > 0; got != v.published {
			h.fatalf("volume %s: target mounted %v, published %v", v.name, got, v.published)
		}
		if got := seen[v.staging(h.dir)] > 0; got != (v.staged && !v.block) {
			h.fatalf("volume %s: staging path mounted %v, staged %v (block %v)", v.name, got, v.staged, v.block)
		}
		if v.published {
			h.verifyData(v)
		}
	}
}

// mountInfos lists every mount of the harness's mount namespace.
func (h *harness) mountInfos() []mount.MountInfo {
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		h.t.Fatalf("mountinfo: %v", err)
	}
	return infos
}

// mounts lists the mount points under the harness directory.
func (h *harness) mounts() []string {
	var out []string
	for _, m := range h.mountInfos() {
		if strings.HasPrefix(m.MountPoint, h.dir+"/") {
			out = append(out, m.MountPoint)
		}
	}
	return out
}

// waitCleaned waits until no disk is being cleaned (cleaning resumes after
// a restart) and checks that every free disk is blank: a free disk with a
// filesystem left on it would be handed to the next volume with another
// volume's data. A free disk carrying the actor's plant is the driver's
// belief not yet checked against the device; checkActor covers it.
func (h *harness) waitCleaned() {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		rec := h.readState()
		cleaning := 0
		for _, d := range rec.Disks {
			if d.Status == state.Cleaning {
				cleaning++
			}
		}
		if cleaning == 0 {
			for _, d := range rec.Disks {
				if d.Status == state.Free && h.act.plants[d.ID] == nil {
					h.checkBlank(d)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			h.fatalf("%d disks still cleaning after 60s", cleaning)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) checkBlank(d *state.Disk) {
	h.t.Helper()
	dev := h.deviceOf(d)
	out, err := exec.Command("blkid", "-p", "-o", "export", dev).CombinedOutput()
	var exit *exec.ExitError
	if err == nil || !(asExit(err, &exit) && exit.ExitCode() == 2) {
		h.fatalf("free disk %s (%s) is not blank: %v %s", d.ID, dev, err, out)
	}
}

func asExit(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

// deviceOf finds the loop device of a disk record by its backing file.
func (h *harness) deviceOf(d *state.Disk) string {
	for _, l := range h.loops {
		if strings.Contains(d.Identity, l.Backing) {
			return l.Path
		}
	}
	h.fatalf("disk %s (%s) is none of the harness's loop devices", d.ID, d.Identity)
	return ""
}

// teardown removes the actor's mounts and binds, unpublishes, unstages
// and deletes every volume, restarts the driver, then checks that every
// disk ends free and blank, or excluded with the actor's plant intact on
// it, and that nothing stays mounted.
func (h *harness) teardown() {
	h.t.Helper()
	os.Remove(h.crashFile())
	h.settle("")
	h.actorLeave()
	for _, v := range h.sortedVols() {
		if v.id == "" {
			h.retry(call{"create", v})
			if h.vols[v.name] == nil {
				continue
			}
		}
		for _, k := range []string{"unpublish", "unstage", "delete"} {
			if (k == "unpublish" && !v.published) || (k == "unstage" && !v.staged) {
				continue
			}
			h.retry(call{k, v})
		}
	}
	h.check("")
	// A start frees the disks the actor left blank and unused, and keeps
	// those carrying its plants excluded.
	h.ops["graceful restart"]++
	if err := h.drv.stop(); err != nil {
		h.fatalf("%v", err)
	}
	h.restart("")
	rec := h.readState()
	for _, id := range slices.Sorted(maps.Keys(rec.Disks)) {
		d := rec.Disks[id]
		if p := h.act.plants[id]; p != nil {
			if d.Status != state.Excluded {
				h.fatalf("disk %s is %s at the end though it carries %v", id, d.Status, p)
			}
			h.act.steps["plant left to the end, its disk excluded"]++
			continue
		}
		if d.Status != state.Free {
			h.fatalf("disk %s is %s after every volume was deleted (%s)", id, d.Status, d.Reason)
		}
	}
	if len(rec.Disks) != len(h.loops) {
		h.fatalf("the driver manages %d disks of %d", len(rec.Disks), len(h.loops))
	}
	if m := h.mounts(); len(m) > 0 {
		h.fatalf("mounts left: %v", m)
	}
	if err := h.drv.stop(); err != nil {
		h.fatalf("%v", err)
	}
}
