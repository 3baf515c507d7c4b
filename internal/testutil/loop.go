// Package testutil holds helpers for tests that use real loop devices, real
// filesystems and real mounts.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// RequireRoot stops a test that needs root and loop devices when they are not
// available. Under CI (CI set) such a test fails instead of skipping, because CI
// runs as root and must exercise it.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		if _, err := os.Stat("/dev/loop-control"); err == nil {
			return
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("this test needs root and /dev/loop-control, and CI must run it")
	}
	t.Skip("needs root and loop devices (runs in CI)")
}

// Loop is a loop device backed by a sparse file, detached at test cleanup.
type Loop struct {
	// Path is the device node, e.g. /dev/loop3.
	Path string
	// Backing is the backing file.
	Backing string
}

// NewLoop makes a sparse backing file of size bytes in dir (t.TempDir() when dir
// is "") and attaches a loop device to it. The device is detached and the file
// removed when the test ends.
func NewLoop(t testing.TB, dir string, size int64) Loop {
	t.Helper()
	RequireRoot(t)
	if dir == "" {
		dir = t.TempDir()
	}
	f, err := os.CreateTemp(dir, "disk-*.img")
	if err != nil {
		t.Fatalf("backing file: %v", err)
	}
	backing := f.Name()
	if err := f.Truncate(size); err != nil {
		t.Fatalf("truncate %s: %v", backing, err)
	}
	f.Close()
	l, err := Attach(backing)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		DetachIfBacking(l)
		os.Remove(backing)
	})
	return l
}

// DetachIfBacking detaches l.Path only while that loop device is still
// attached to l.Backing: a test that detached and re-attached its disk must
// not detach a device someone else has attached since at the same path.
func DetachIfBacking(l Loop) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(l.Path), "loop", "backing_file"))
	got := strings.TrimSpace(string(b))
	real, _ := filepath.EvalSymlinks(l.Backing)
	if err != nil || (got != l.Backing && got != real) {
		return
	}
	Detach(l.Path)
}

// Attach attaches a loop device to an existing backing file.
func Attach(backing string) (Loop, error) {
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		return Loop{}, &execError{"losetup --find --show " + backing, string(out), err}
	}
	abs, _ := filepath.Abs(backing)
	l := Loop{Path: strings.TrimSpace(string(out)), Backing: abs}
	// A reused loop device keeps the read-only flag a test may have set.
	if out, err := exec.Command("blockdev", "--setrw", l.Path).CombinedOutput(); err != nil {
		Detach(l.Path)
		return Loop{}, &execError{"blockdev --setrw " + l.Path, string(out), err}
	}
	return l, nil
}

// Detach clears the read-only flag of a loop device and detaches it,
// ignoring one that is already gone.
func Detach(path string) {
	_ = exec.Command("blockdev", "--setrw", path).Run()
	_ = exec.Command("losetup", "--detach", path).Run()
}

// SetRotational marks a loop device as rotational (hdd) or not (ssd) through
// sysfs, so media matching can be tested on loop devices.
func SetRotational(t testing.TB, device string, rotational bool) {
	t.Helper()
	v := "0"
	if rotational {
		v = "1"
	}
	p := filepath.Join("/sys/block", filepath.Base(device), "queue/rotational")
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		t.Fatalf("set %s: %v", p, err)
	}
}

type execError struct {
	cmd, out string
	err      error
}

func (e *execError) Error() string {
	return e.cmd + ": " + e.err.Error() + ": " + strings.TrimSpace(e.out)
}

// QuietLogs sends klog output of a test binary to a file in the temporary
// directory (named after the package) instead of stderr, so that test reports
// stay readable; TEST_LOGS=1 keeps logs on stderr. Call it from TestMain.
func QuietLogs(pkg string) {
	if os.Getenv("TEST_LOGS") != "" {
		return
	}
	f, err := os.Create(filepath.Join(os.TempDir(), "ecs-localdisk-csi-"+pkg+".log"))
	if err != nil {
		return
	}
	klog.LogToStderr(false)
	klog.SetOutputBySeverity("INFO", f)
}

// NewLoopRun attaches n loop devices with consecutive numbers (looked for
// from loop100 up, away from the ones losetup --find hands out), each on its
// own sparse file of size bytes in dir. They are detached at test cleanup.
func NewLoopRun(t testing.TB, dir string, size int64, n int) []Loop {
	t.Helper()
	RequireRoot(t)
	var files []string
	for i := 0; i < n; i++ {
		f, err := os.CreateTemp(dir, "run-*.img")
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		f.Close()
		files = append(files, f.Name())
	}
	for base := 100; base < 250; base += n {
		var loops []Loop
		for i := 0; i < n; i++ {
			l, err := AttachAt(base+i, files[i])
			if err != nil {
				break
			}
			loops = append(loops, l)
		}
		if len(loops) == n {
			t.Cleanup(func() {
				for _, l := range loops {
					Detach(l.Path)
				}
			})
			return loops
		}
		for _, l := range loops {
			Detach(l.Path)
		}
	}
	t.Fatalf("no run of %d free loop devices between loop100 and loop250", n)
	return nil
}

// AttachAt attaches /dev/loop<num> to backing, creating the node if needed.
func AttachAt(num int, backing string) (Loop, error) {
	path := fmt.Sprintf("/dev/loop%d", num)
	if _, err := os.Stat(path); os.IsNotExist(err) {
		if err := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(num)))); err != nil {
			return Loop{}, err
		}
	}
	if out, err := exec.Command("losetup", path, backing).CombinedOutput(); err != nil {
		return Loop{}, &execError{"losetup " + path + " " + backing, string(out), err}
	}
	abs, _ := filepath.Abs(backing)
	return Loop{Path: path, Backing: abs}, nil
}

// Swap detaches two loop devices and attaches each to the other's backing
// file: the kernel names of two disks trade places, as after a reboot.
func Swap(t testing.TB, a, b *Loop) {
	t.Helper()
	Detach(a.Path)
	Detach(b.Path)
	for _, l := range []struct {
		path, backing string
	}{{a.Path, b.Backing}, {b.Path, a.Backing}} {
		if out, err := exec.Command("losetup", l.path, l.backing).CombinedOutput(); err != nil {
			t.Fatalf("losetup %s %s: %v %s", l.path, l.backing, err, out)
		}
	}
	a.Backing, b.Backing = b.Backing, a.Backing
}

// SectorsWritten reads the count of 512-byte sectors written to the block
// device at path from /sys/block/<dev>/stat; zero-outs (BLKZEROOUT) count
// as writes.
func SectorsWritten(t testing.TB, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(path), "stat"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) < 7 {
		t.Fatalf("%s: stat %q", path, b)
	}
	n, err := strconv.ParseInt(f[6], 10, 64)
	if err != nil {
		t.Fatalf("%s: stat %q: %v", path, b, err)
	}
	return n
}
