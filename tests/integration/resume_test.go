package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// zeroKilled is a deleted volume's loop disk whose zero cleanup the real
// driver binary was SIGKILLed in, past the halfway mark.
type zeroKilled struct {
	bin, stateDir, sock string
	loop                testutil.Loop
	disk                string
	done                int64 // bytes zeroed at the last checkpoint
}

const zeroKilledSize = 256 << 20

// killZeroing fills a loop disk with 0xaa, has the driver binary (zeroing
// at 32 MiB/s, a checkpoint a second) allocate and delete a volume on it
// with cleanupPolicy zero, and SIGKILLs the driver once its state shows a
// checkpoint past half of the disk.
func killZeroing(t *testing.T) zeroKilled {
	testutil.RequireRoot(t)
	const size = zeroKilledSize
	z := zeroKilled{bin: buildDriverBinary(t)}
	dir := t.TempDir()
	z.loop = testutil.NewLoop(t, dir, size)
	if err := writeAt(z.loop.Path, bytes.Repeat([]byte{0xaa}, size), 0); err != nil {
		t.Fatal(err)
	}
	z.stateDir, z.sock = filepath.Join(dir, "state"), filepath.Join(dir, "csi.sock")
	a := runDriver(t, z.bin, z.stateDir, z.sock, "node-a", []string{z.loop.Path}, "--cleanup-max-rate=32Mi", "--cleanup-checkpoint-interval=1s")
	a.waitReady(z.sock, "node-a")

	conn, err := grpc.NewClient("unix://"+z.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cc := csi.NewControllerClient(conn)
	v, err := cc.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-zero", Parameters: map[string]string{"cleanupPolicy": "zero"},
		VolumeCapabilities: []*csi.VolumeCapability{testutil.BlockCap()}})
	if err != nil {
		t.Fatal(err)
	}
	z.disk = v.GetVolume().GetVolumeContext()["disk"]
	if _, err := cc.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolume().GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	// Past the halfway mark (about 4 s at 32 MiB/s), SIGKILL.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint past half of the disk within 30s")
		}
		if c := z.record(t).Cleanup; c != nil && c.DoneBytes >= size/2 {
			break
		}
	}
	a.kill()
	killed := z.record(t)
	if killed.Status != state.Cleaning || killed.Cleanup == nil || killed.Cleanup.DoneBytes < size/2 || killed.Cleanup.DoneBytes >= size {
		t.Fatalf("record after SIGKILL: %+v, cleanup %+v", killed, killed.Cleanup)
	}
	z.done = killed.Cleanup.DoneBytes
	t.Logf("killed with %d of %d bytes zeroed at the last checkpoint", z.done, size)
	if firstNonZero(t, z.loop.Path, z.done, size-z.done) < 0 {
		t.Fatalf("the disk is all zero already: the kill came too late to show a resume")
	}
	return z
}

// record is the disk's record in the state file.
func (z zeroKilled) record(t *testing.T) *state.Disk {
	t.Helper()
	rec, err := state.NewStore(z.stateDir).Load()
	if err != nil {
		t.Fatal(err)
	}
	return rec.Disks[z.disk]
}

// restart runs the driver binary again and waits (at most 60 s) until the
// disk's status is want; it returns the driver's output, after SIGTERM.
func (z zeroKilled) restart(t *testing.T, want state.Status) (*state.Disk, string) {
	t.Helper()
	b := runDriver(t, z.bin, z.stateDir, z.sock, "node-a", []string{z.loop.Path})
	b.waitReady(z.sock, "node-a")
	var d *state.Disk
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if d = z.record(t); d.Status == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the disk is %s, not %s, 60s after the restart", d.Status, want)
		}
	}
	_ = syscall.Kill(b.cmd.Process.Pid, syscall.SIGTERM)
	if _, err := b.wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	return d, b.output()
}

// TestZeroCleanupResumesAfterSIGKILL: the restarted driver goes on from
// the last checkpoint of the killed one (its log says where, and the
// device's write counter shows it writes exactly the rest), the disk
// becomes free only when the whole of it is zero, and its record keeps no
// checkpoint.
func TestZeroCleanupResumesAfterSIGKILL(t *testing.T) {
	z := killZeroing(t)
	before := testutil.SectorsWritten(t, z.loop.Path)
	d, out := z.restart(t, state.Free)
	if d.Cleanup != nil || d.Residual {
		t.Fatalf("free disk record %+v keeps cleanup %+v", d, d.Cleanup)
	}
	if got := (testutil.SectorsWritten(t, z.loop.Path) - before) * 512; got != zeroKilledSize-z.done {
		t.Errorf("the restarted driver wrote %d bytes to the disk, want the %d its checkpoint had left", got, zeroKilledSize-z.done)
	}
	if off, ok := allZero(t, z.loop.Path); !ok {
		t.Fatalf("byte %d not zero on the disk called free", off)
	}
	want := `"Resuming cleanup" device="` + z.loop.Path + `" cleanupPolicy="zero" pass=0 doneBytes=` + strconv.FormatInt(z.done, 10)
	if !strings.Contains(out, want) {
		t.Fatalf("the restarted driver's log does not say %s:\n%s", want, out)
	}
}

// TestZeroCleanupResumeRefusesWritesSince: someone writes into the part
// already zeroed while the driver is down. The restarted driver does not
// go on: the disk is excluded with the reason, nothing more is written to
// it, and the data written since stays.
func TestZeroCleanupResumeRefusesWritesSince(t *testing.T) {
	z := killZeroing(t)
	data := []byte("written while the driver was down")
	if err := writeAt(z.loop.Path, data, 4096); err != nil {
		t.Fatal(err)
	}
	before := testutil.SectorsWritten(t, z.loop.Path)
	d, _ := z.restart(t, state.Excluded)
	if !strings.Contains(d.Reason, "written after its cleanup began") || !strings.Contains(d.Reason, "byte 4096") || d.Cleanup != nil {
		t.Fatalf("excluded disk record %+v, reason %q", d, d.Reason)
	}
	if n := testutil.SectorsWritten(t, z.loop.Path) - before; n != 0 {
		t.Errorf("the restarted driver wrote %d sectors to the disk", n)
	}
	got := make([]byte, len(data))
	f, err := os.Open(z.loop.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the data written since reads back %q, %v", got, err)
	}
	if off := firstNonZero(t, z.loop.Path, zeroKilledSize-1<<20, 1<<20); off < 0 {
		t.Fatalf("the disk's end was zeroed after all")
	}
}

// firstNonZero returns the offset of the first byte of [off, off+n) on dev
// that is not zero, or -1.
func firstNonZero(t *testing.T, dev string, off, n int64) int64 {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for pos := off; pos < off+n; pos += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), off+n-pos)]
		if _, err := f.ReadAt(b, pos); err != nil {
			t.Fatal(err)
		}
		for i, c := range b {
			if c != 0 {
				return pos + int64(i)
			}
		}
	}
	return -1
}
