package state

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLockDirExcludesSecondHolder: while one holder has the state
// directory, a second LockDir fails at once with ErrLocked, naming the
// directory and the holder's PID; once released, the directory can be
// locked again.
func TestLockDirExcludesSecondHolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	first, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	second, err := LockDir(dir)
	if err == nil {
		second.Unlock()
		first.Unlock()
		t.Fatal("a second LockDir got the directory while the first held it")
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("the refused LockDir waited %v instead of failing at once", time.Since(start))
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("error %v does not wrap ErrLocked", err)
	}
	for _, want := range []string{dir, "process " + strconv.Itoa(os.Getpid())} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if err := first.Unlock(); err != nil {
		t.Fatal(err)
	}
	third, err := LockDir(dir)
	if err != nil {
		t.Fatalf("LockDir after the holder released the directory: %v", err)
	}
	third.Unlock()
}

// lockHelperEnv makes the test binary a helper process that locks the
// directory named in the variable, says "locked" and waits to be killed.
const lockHelperEnv = "STATE_LOCK_HELPER_DIR"

// TestLockHelperProcess is not a test: it is the helper process of
// TestLockDirReleasedWhenHolderDies.
func TestLockHelperProcess(t *testing.T) {
	dir := os.Getenv(lockHelperEnv)
	if dir == "" {
		t.Skip("not a test: the helper process of TestLockDirReleasedWhenHolderDies, run only with " + lockHelperEnv + " set")
	}
	if _, err := LockDir(dir); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	time.Sleep(time.Minute) // killed long before
	os.Exit(0)
}

// startLockHolder runs a helper process holding dir and waits (at most
// 30 s) until it says it has the lock. The process is killed at cleanup.
func startLockHolder(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		if s != "locked" {
			t.Fatalf("helper process: %q", s)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("helper process did not lock within 30s")
	}
	return cmd
}

// TestLockDirReleasedWhenHolderDies: a process killed with SIGKILL while
// holding the directory leaves it lockable: the kernel releases the lock,
// and the lock file left behind does not count.
func TestLockDirReleasedWhenHolderDies(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	holder := startLockHolder(t, dir)
	_, err := LockDir(dir)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("LockDir while another process holds the directory: %v; want ErrLocked", err)
	}
	if want := "process " + strconv.Itoa(holder.Process.Pid); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the holder (%s)", err, want)
	}
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = holder.Wait()
	l, err := LockDir(dir)
	if err != nil {
		t.Fatalf("LockDir after the holder was killed: %v", err)
	}
	defer l.Unlock()
	b, _ := os.ReadFile(filepath.Join(dir, LockFileName))
	if strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("lock file holds %q; want this process's PID %d", b, os.Getpid())
	}
}

// TestLockDirNotInheritedByChildren: a tool the holder runs does not
// inherit the lock, so the lock ends with the holder even while such a
// child lives on.
func TestLockDirNotInheritedByChildren(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	l, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	if l2, err := LockDir(dir); err == nil {
		l2.Unlock()
		t.Fatal("a second LockDir got the directory while the first held it")
	}
	l.Unlock()
	l3, err := LockDir(dir)
	if err != nil {
		t.Fatalf("LockDir after the holder released it, its child still running: %v", err)
	}
	l3.Unlock()
}
