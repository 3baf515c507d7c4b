package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// logBuffer collects klog output; klog writes from the cleaner's goroutine
// while the test reads.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the distinct log lines from byte offset from on that
// contain every one of subs. klog writes an error once per severity, so
// duplicates are dropped.
func (l *logBuffer) lines(from int, subs ...string) []string {
	l.mu.Lock()
	text := l.b.String()[from:]
	l.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, line := range strings.Split(text, "\n") {
		ok := !seen[line]
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			seen[line] = true
			out = append(out, line)
		}
	}
	return out
}

// len is the number of bytes logged so far, an offset for lines.
func (l *logBuffer) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// captureLogs sends klog output into a buffer until the test ends.
func captureLogs(t *testing.T) *logBuffer {
	t.Helper()
	saved := klog.CaptureState()
	t.Cleanup(saved.Restore)
	buf := &logBuffer{}
	klog.LogToStderr(false)
	klog.SetOutput(buf)
	return buf
}

// breakTool makes the external tool fail for the driver, which finds its
// tools through PATH at each run: with missing, PATH holds only links to the
// other tools; else a script of that name that prints an error and exits 1
// comes first in PATH. The returned function puts the tool back; so does the
// end of the test.
func breakTool(t *testing.T, dir, tool string, missing bool) (restore func()) {
	t.Helper()
	orig := os.Getenv("PATH")
	bin, err := os.MkdirTemp(dir, "bin-")
	if err != nil {
		t.Fatal(err)
	}
	path := bin + ":" + orig
	if missing {
		for _, name := range append([]string{"losetup", "sh"}, mounter.Tools...) {
			if name == tool {
				continue
			}
			p, err := exec.LookPath(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(p, filepath.Join(bin, name)); err != nil {
				t.Fatal(err)
			}
		}
		path = bin
	} else {
		script := fmt.Sprintf("#!/bin/sh\necho \"%s: injected failure\" >&2\nexit 1\n", tool)
		if err := os.WriteFile(filepath.Join(bin, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", path)
	if p, err := exec.LookPath(tool); missing != (err != nil) || (!missing && p != filepath.Join(bin, tool)) {
		t.Fatalf("%s resolves to %q (%v) with PATH=%s", tool, p, err, path)
	}
	return func() { os.Setenv("PATH", orig) }
}

// diskRecord reads the disk's record from the state file on disk.
func (e *env) diskRecord(id string) *state.Disk {
	e.t.Helper()
	rec, err := state.NewStore(e.path("state")).Load()
	if err != nil || rec == nil {
		e.t.Fatalf("reading the state file: %v", err)
	}
	return rec.Disks[id]
}

// waitStatus waits until the state file shows the disk with status s.
func (e *env) waitStatus(id string, s state.Status) *state.Disk {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		d := e.diskRecord(id)
		if d != nil && d.Status == s {
			return d
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("disk %s did not reach status %s: %+v", id, s, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLog waits until at least n distinct log lines from offset from on
// contain every one of subs, and returns them.
func waitLog(t *testing.T, logs *logBuffer, from, n int, subs ...string) []string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		got := logs.lines(from, subs...)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d log lines with %q: %q", n, subs, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// capacity is GetCapacity's available capacity and maximum volume size.
func (e *env) capacity() (int64, int64) {
	e.t.Helper()
	c, err := e.drv.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
	if err != nil {
		e.t.Fatal(err)
	}
	return c.AvailableCapacity, c.GetMaximumVolumeSize().GetValue()
}

// createSized runs CreateVolume asking for at least required bytes.
func (e *env) createSized(name string, vc *csi.VolumeCapability, params map[string]string, required int64) (*csi.Volume, error) {
	r, err := e.drv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name, Parameters: params,
		VolumeCapabilities: []*csi.VolumeCapability{vc}, CapacityRange: &csi.CapacityRange{RequiredBytes: required}})
	return r.GetVolume(), err
}

// filledVolume creates an ext4 volume of at least required bytes with the
// cleanup policy, writes a file into it through a publish, and writes 1 MiB
// of random bytes at 16 MiB of its device after unstaging. It returns the
// volume and its device.
func (e *env) filledVolume(name, policy string, required int64) (*csi.Volume, string) {
	e.t.Helper()
	vc := testutil.MountCap("ext4")
	v, err := e.createSized(name, vc, map[string]string{"cleanupPolicy": policy}, required)
	if err != nil {
		e.t.Fatal(err)
	}
	staging, target := e.path("staging-"+name), e.path("pod-"+name+"/vol")
	e.stage(v, vc, staging)
	e.publish(v, vc, staging, target, false)
	if err := os.WriteFile(filepath.Join(target, "secret"), []byte("data of "+name), 0o600); err != nil {
		e.t.Fatal(err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)
	dev := e.device(v)
	junk := make([]byte, 1<<20)
	rand.Read(junk)
	if err := writeAt(dev, junk, 16<<20); err != nil {
		e.t.Fatal(err)
	}
	return v, dev
}

// checkWiped checks the device as the policy leaves it: no signatures; the
// random bytes at 16 MiB gone after discard; every byte zero after zero and
// shred.
func checkWiped(t *testing.T, e *env, dev, policy string) {
	t.Helper()
	if p, err := e.m.Probe(context.Background(), dev); err != nil || len(p.Signatures) != 0 {
		t.Fatalf("%s: signatures left after %s: %v %v", dev, policy, p.Signatures, err)
	}
	switch policy {
	case "discard":
		f, err := os.Open(dev)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got := make([]byte, 1<<20)
		if _, err := f.ReadAt(got, 16<<20); err != nil || !bytes.Equal(got, make([]byte, 1<<20)) {
			t.Fatalf("%s: data at 16 MiB survived discard: %v", dev, err)
		}
	case "zero", "shred":
		if off, ok := allZero(t, dev); !ok {
			t.Fatalf("%s: byte at %d is not zero after %s", dev, off, policy)
		}
	}
}

// TestCleanupToolFails: with the tool of the volume's cleanup policy missing
// or failing, DeleteVolume leaves the disk failed in the state file with a
// reason naming the tool and its error, logged the same way; the disk is
// out of GetCapacity and out of CreateVolume's reach while the retries keep
// failing. Once the tool is back, a retry wipes the disk as the policy says
// and frees it: capacity returns and CreateVolume gets the disk again.
func TestCleanupToolFails(t *testing.T) {
	cases := []struct {
		policy, tool string
		missing      bool
		reason       []string
	}{
		{"signatures", "wipefs", true, []string{"wipefs", "executable file not found"}}, // the probe before the wipe runs wipefs too
		{"discard", "blkdiscard", false, []string{"blkdiscard", "exit status 1", "blkdiscard: injected failure"}},
	}
	for _, c := range cases {
		t.Run(c.policy, func(t *testing.T) {
			const small, big = 32 << 20, 64 << 20
			logs := captureLogs(t)
			e := newEnv(t, []int64{small, big}, nil)
			v, dev := e.filledVolume("pvc-"+c.policy, c.policy, big)
			id := v.VolumeContext["disk"]
			if avail, _ := e.capacity(); avail != small {
				t.Fatalf("capacity with the volume allocated: %d, want %d", avail, small)
			}
			restore := breakTool(t, e.dir, c.tool, c.missing)
			if _, err := e.drv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
				t.Fatalf("DeleteVolume: %v", err)
			}
			d := e.waitStatus(id, state.Failed)
			for _, want := range append([]string{dev, c.policy}, c.reason...) {
				if !strings.Contains(d.Reason, want) {
					t.Fatalf("failure reason %q does not say %q", d.Reason, want)
				}
			}
			t.Logf("state file: disk %s %s: %s", id, d.Status, d.Reason)
			// The failure is logged with its cause, and retried.
			failed := waitLog(t, logs, 0, 2, "Disk cleanup failed", `disk="`+id+`"`)
			for _, want := range c.reason {
				if !strings.Contains(failed[0], want) {
					t.Fatalf("log line %q does not say %q", failed[0], want)
				}
			}
			t.Logf("log: %s", failed[0])
			if d := e.diskRecord(id); d.Status != state.Failed || d.Volume == nil || d.Volume.ID != v.VolumeId {
				t.Fatalf("after failed retries the disk record is %+v", d)
			}
			// The free disk still counts: it was shown blank before the
			// tool went (wipefs is also the probe's) and nothing wrote to
			// it since, so GetCapacity does not probe it again yet.
			wantFree := int64(small)
			if avail, maxSize := e.capacity(); avail != wantFree || maxSize != wantFree {
				t.Fatalf("capacity with a failed disk: available %d, maximum %d; want %d, %d", avail, maxSize, wantFree, wantFree)
			}
			if _, err := e.createSized("pvc-after", testutil.MountCap("ext4"), nil, big); status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("CreateVolume that only the failed disk fits: %v, want ResourceExhausted", err)
			}
			if got := run(t, "blkid", "-p", "-o", "value", "-s", "TYPE", dev); strings.TrimSpace(got) != "ext4" {
				t.Fatalf("the failed disk no longer holds the volume's filesystem: %q", got)
			}

			restore()
			from := logs.len()
			d = e.waitStatus(id, state.Free)
			if d.Reason != "" || d.Volume != nil || d.CleanupPolicy != "" {
				t.Fatalf("freed disk record keeps its past: %+v", d)
			}
			waitLog(t, logs, from, 1, "Disk clean and free", `disk="`+id+`"`)
			checkWiped(t, e, dev, c.policy)
			if avail, maxSize := e.capacity(); avail != small+big || maxSize != big {
				t.Fatalf("capacity after the retry: available %d, maximum %d", avail, maxSize)
			}
			again, err := e.createSized("pvc-after", testutil.MountCap("ext4"), nil, big)
			if err != nil || again.VolumeContext["disk"] != id {
				t.Fatalf("CreateVolume after the retry: %v %v, want disk %s", again, err, id)
			}
		})
	}
}

// TestCleanupDeviceErrors: a device that fails the wipe, or is not there to
// be wiped, leaves the disk failed with the reason, touches no other device,
// and is freed and wiped by a retry once the fault is gone.
func TestCleanupDeviceErrors(t *testing.T) {
	const small, big = 32 << 20, 64 << 20
	// rigged captures the logs and makes a big disk with a filled volume V,
	// a small block volume W holding data and a small free disk, and
	// fingerprints W's and the free disk's devices.
	rigged := func(t *testing.T, policy string) (e *env, rig *loopRig, logs *logBuffer, v *csi.Volume, vFile string, others map[string]fingerprint) {
		logs = captureLogs(t)
		e, rig = newRigEnv(t, []int64{big, small, small}, 1)
		v, dev := e.filledVolume("pvc-v", policy, big)
		vFile = rig.backingOf(dev)
		w := e.create("pvc-w", testutil.BlockCap(), nil)
		if err := writeAt(e.device(w), []byte("volume W's data"), 4096); err != nil {
			t.Fatal(err)
		}
		others = map[string]fingerprint{}
		for _, f := range rig.disks {
			if f != vFile {
				others[f] = fingerprintOf(t, rig.at(f))
			}
		}
		return e, rig, logs, v, vFile, others
	}
	unchanged := func(t *testing.T, rig *loopRig, others map[string]fingerprint) {
		t.Helper()
		for f, fp := range others {
			if fingerprintOf(t, rig.at(f)) != fp {
				t.Fatalf("%s changed", f)
			}
		}
	}

	for _, policy := range []string{"signatures", "zero"} {
		t.Run("read-only device "+policy, func(t *testing.T) {
			e, rig, logs, v, vFile, others := rigged(t, policy)
			id := v.VolumeContext["disk"]
			dev := rig.at(vFile)
			rig.detach(vFile)
			rig.attach(numOf(t, dev), vFile, true)
			if ro, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "ro")); strings.TrimSpace(string(ro)) != "1" {
				t.Fatalf("%s is not read-only: %q", dev, ro)
			}
			if _, err := e.drv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
				t.Fatalf("DeleteVolume: %v", err)
			}
			d := e.waitStatus(id, state.Failed)
			if !strings.Contains(d.Reason, dev) || !strings.Contains(d.Reason, policy) ||
				!(strings.Contains(d.Reason, "not permitted") || strings.Contains(d.Reason, "read-only")) {
				t.Fatalf("failure reason %q does not say the write was refused", d.Reason)
			}
			t.Logf("state file: disk %s %s: %s", id, d.Status, d.Reason)
			failed := waitLog(t, logs, 0, 2, "Disk cleanup failed", `disk="`+id+`"`)
			t.Logf("log: %s", failed[0])
			if got := run(t, "blkid", "-p", "-o", "value", "-s", "TYPE", dev); strings.TrimSpace(got) != "ext4" {
				t.Fatalf("the read-only disk changed: %q", got)
			}
			if avail, _ := e.capacity(); avail != small {
				t.Fatalf("capacity with a failed disk: %d, want %d", avail, small)
			}
			unchanged(t, rig, others)

			rig.detach(vFile)
			rig.attach(numOf(t, dev), vFile, false)
			e.waitStatus(id, state.Free)
			checkWiped(t, e, dev, policy)
			if avail, _ := e.capacity(); avail != small+big {
				t.Fatalf("capacity after the retry: %d", avail)
			}
			unchanged(t, rig, others)
		})
	}

	t.Run("another disk at its path", func(t *testing.T) {
		e, rig, logs, v, vFile, others := rigged(t, "signatures")
		id := v.VolumeContext["disk"]
		dev := rig.at(vFile)
		foreign := rig.newFile(big)
		run(t, "mkfs.ext4", "-q", "-F", "-L", "foreign", foreign)
		rig.detach(vFile)
		rig.attach(numOf(t, dev), foreign, false)
		fp := fingerprintOf(t, dev)
		if _, err := e.drv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
			t.Fatalf("DeleteVolume: %v", err)
		}
		d := e.waitStatus(id, state.Failed)
		if !strings.Contains(d.Reason, "not present") || !strings.Contains(d.Reason, id) {
			t.Fatalf("failure reason %q does not say the disk is missing", d.Reason)
		}
		t.Logf("state file: disk %s %s: %s", id, d.Status, d.Reason)
		// Let a few retries fail: none may wipe the device at the old path.
		waitLog(t, logs, 0, 3, "Disk cleanup failed", `disk="`+id+`"`, "not present")
		if fingerprintOf(t, dev) != fp {
			t.Fatalf("the foreign disk at %s was written", dev)
		}
		if d := e.diskRecord(id); d.Status != state.Failed {
			t.Fatalf("disk %s is %s without its device", id, d.Status)
		}
		unchanged(t, rig, others)

		back := rig.attach(rig.nums[len(rig.nums)-1], vFile, false)
		e.waitStatus(id, state.Free)
		checkWiped(t, e, back, "signatures")
		if fingerprintOf(t, dev) != fp {
			t.Fatalf("the foreign disk at %s was written", dev)
		}
		unchanged(t, rig, others)
	})
}

// TestCleanupResumesAfterRestart: a disk whose cleanup failed is still
// failed after a restart and is retried by the new driver; once the fault is
// gone a restart alone, without another DeleteVolume, gets it wiped and
// freed.
func TestCleanupResumesAfterRestart(t *testing.T) {
	const small, big = 32 << 20, 64 << 20
	logs := captureLogs(t)
	e := newEnv(t, []int64{small, big}, nil)
	v, dev := e.filledVolume("pvc-restart", "discard", big)
	id := v.VolumeContext["disk"]
	restore := breakTool(t, e.dir, "blkdiscard", false)
	if _, err := e.drv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
	e.waitStatus(id, state.Failed)
	e.inv.Stop()
	if d := e.diskRecord(id); d.Status != state.Failed || !strings.Contains(d.Reason, "blkdiscard: injected failure") {
		t.Fatalf("after stop: %+v", d)
	}

	from := logs.len()
	e.start()
	if d := e.diskRecord(id); d.Status != state.Failed {
		t.Fatalf("right after restart: %+v", d)
	}
	waitLog(t, logs, from, 2, "Disk cleanup failed", `disk="`+id+`"`, "blkdiscard: injected failure")
	if d := e.diskRecord(id); d.Status != state.Failed {
		t.Fatalf("after failed retries since the restart: %+v", d)
	}
	if avail, _ := e.capacity(); avail != small {
		t.Fatalf("capacity after restart with a failed disk: %d, want %d", avail, small)
	}
	if _, err := e.createSized("pvc-new", testutil.MountCap("ext4"), nil, big); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("CreateVolume that only the failed disk fits: %v, want ResourceExhausted", err)
	}

	e.inv.Stop()
	restore()
	from = logs.len()
	e.start()
	e.waitStatus(id, state.Free)
	waitLog(t, logs, from, 1, "Disk clean and free", `disk="`+id+`"`)
	checkWiped(t, e, dev, "discard")
	if avail, _ := e.capacity(); avail != small+big {
		t.Fatalf("capacity after the retry: %d", avail)
	}
	if again, err := e.createSized("pvc-new", testutil.MountCap("ext4"), nil, big); err != nil || again.VolumeContext["disk"] != id {
		t.Fatalf("CreateVolume after the retry: %v %v, want disk %s", again, err, id)
	}
}
