package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// TestMistypedDevicesKeepTheDriverNotReady: on a node's first start, a
// --devices entry that names no device keeps the driver not ready, and
// Probe says which entry and what to do; nothing is recorded, so the
// restarts that a failing liveness probe causes check again instead of
// starting with the disks that did match. --allow-no-disks makes a node
// without disks ready. Once disks are recorded, an entry whose disk is gone
// is a lost disk: the driver stays ready for the others.
func TestMistypedDevicesKeepTheDriverNotReady(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	loop := testutil.NewLoop(t, dir, 64<<20)
	bin := buildDriverBinary(t)
	stateDir, sock := filepath.Join(dir, "state"), filepath.Join(dir, "csi.sock")
	typo := filepath.Join(dir, "vdbb")

	notReady := func(devices []string, wantIn ...string) {
		t.Helper()
		d := runDriver(t, bin, stateDir, sock, node, devices)
		err := d.probeOutcome(sock)
		d.kill()
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("--devices=%s: Probe = %v; want FAILED_PRECONDITION\n%s", strings.Join(devices, ","), err, d.output())
		}
		for _, w := range append(wantIn, "--allow-no-disks", "--devices") {
			if !strings.Contains(status.Convert(err).Message(), w) {
				t.Errorf("Probe message lacks %q: %s", w, status.Convert(err).Message())
			}
		}
		if !strings.Contains(d.output(), wantIn[0]) {
			t.Errorf("the log does not name %s:\n%s", wantIn[0], d.output())
		}
		if _, err := os.Stat(state.NewStore(stateDir).Path()); !os.IsNotExist(err) {
			t.Fatalf("a not-ready first start recorded the node state (%v)", err)
		}
	}
	// One good entry and one typo, twice: the second start (as after a
	// liveness restart) must not find the good disk recorded and take it as
	// a reason to be ready.
	notReady([]string{loop.Path, typo}, typo+": no such device")
	notReady([]string{loop.Path, typo}, typo+": no such device")
	// Only the typo.
	notReady([]string{typo}, typo)
	// Only a disk that holds data the driver did not put there (as the
	// system disk named instead of a local one would): found, but not
	// usable.
	held := testutil.NewLoop(t, dir, 64<<20)
	run(t, "mkfs.ext4", "-q", "-F", held.Path)
	notReady([]string{held.Path, typo}, typo)
	notReady([]string{held.Path}, held.Path, "signatures")

	// A node expected to have no disks says so.
	d := runDriver(t, bin, stateDir, sock, node, []string{typo}, "--allow-no-disks")
	if err := d.probeOutcome(sock); err != nil {
		t.Fatalf("with --allow-no-disks: Probe = %v\n%s", err, d.output())
	}
	d.kill()
	os.RemoveAll(stateDir)

	// A right list: ready, the disk recorded.
	d = runDriver(t, bin, stateDir, sock, node, []string{loop.Path})
	d.waitReady(sock, node)
	d.kill()
	// Later starts: the typo'd (or gone) entry no longer stops the node.
	d = runDriver(t, bin, stateDir, sock, node, []string{loop.Path, typo})
	if err := d.probeOutcome(sock); err != nil {
		t.Fatalf("a later start with a missing entry: Probe = %v; want ready\n%s", err, d.output())
	}
	d.kill()
	if !strings.Contains(d.output(), typo) {
		t.Errorf("the missing entry was not logged:\n%s", d.output())
	}
}
