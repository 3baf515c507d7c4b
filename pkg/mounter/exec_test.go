package mounter

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	utilexec "k8s.io/utils/exec"
	testingexec "k8s.io/utils/exec/testing"
)

// These tests run Real against a scripted exec: the exact command lines,
// empty stdin, and how exit statuses and output become results and errors.

type step struct {
	argv           string // expected command line, space-separated
	stdout, stderr string
	code           int    // exit status; 0 is success
	concurrent     bool   // may run in any order with the concurrent steps next to it
	hook           func() // called when the step runs, before it answers
}

// probeSteps are the two programs of a Probe, which run at once.
func probeSteps(blkid, wipefs step) []step {
	blkid.concurrent, wipefs.concurrent = true, true
	return []step{blkid, wipefs}
}

// scripted returns a Real whose exec expects exactly steps, in order;
// adjacent concurrent steps may come in any order among themselves.
func scripted(t *testing.T, steps ...step) *Real {
	t.Helper()
	var (
		mu   sync.Mutex
		used = make([]bool, len(steps))
	)
	// take marks and returns the step a command line runs: the first one
	// not yet run, or among the concurrent steps that lead the rest, the
	// one with that command line.
	take := func(argv string) step {
		mu.Lock()
		defer mu.Unlock()
		first := -1
		for i := range steps {
			if used[i] {
				continue
			}
			if first < 0 {
				first = i
			}
			if i != first && (!steps[i].concurrent || !steps[first].concurrent) {
				break
			}
			if steps[i].argv == argv {
				used[i] = true
				return steps[i]
			}
		}
		if first < 0 {
			t.Errorf("ran %q after every scripted command", argv)
			return step{argv: argv}
		}
		used[first] = true
		return steps[first] // its RunScript reports the wrong command line
	}
	fe := &testingexec.FakeExec{}
	for range steps {
		fe.CommandScript = append(fe.CommandScript, func(cmd string, args ...string) utilexec.Cmd {
			s := take(strings.Join(append([]string{cmd}, args...), " "))
			fc := &testingexec.FakeCmd{}
			fc.RunScript = []testingexec.FakeAction{func() ([]byte, []byte, error) {
				if got := strings.Join(fc.Argv, " "); got != s.argv {
					t.Errorf("ran %q, want %q", got, s.argv)
				}
				if fc.Stdin == nil {
					t.Errorf("%s: stdin not set", s.argv)
				} else if b, _ := io.ReadAll(fc.Stdin); len(b) != 0 {
					t.Errorf("%s: stdin %q, want empty", s.argv, b)
				}
				if s.hook != nil {
					s.hook()
				}
				var err error
				if s.code != 0 {
					err = testingexec.FakeExitError{Status: s.code}
				}
				return []byte(s.stdout), []byte(s.stderr), err
			}}
			return testingexec.InitFakeCmd(fc, cmd, args...)
		})
	}
	t.Cleanup(func() {
		if fe.CommandCalls != len(steps) {
			t.Errorf("ran %d commands, want %d", fe.CommandCalls, len(steps))
		}
	})
	return NewWithOptions(Options{Exec: fe, MountInfoPath: filepath.Join(t.TempDir(), "mountinfo")})
}

// fakeDevice is a readable regular file standing in for a device.
func fakeDevice(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestProbeVerdicts(t *testing.T) {
	ctx := context.Background()
	dev := fakeDevice(t)
	blkid := "blkid -p -o export " + dev
	wipefs := "wipefs --no-act --noheadings --output TYPE " + dev
	cases := []struct {
		name  string
		steps []step
		want  string // Signatures|FSType|UUID
	}{
		{"blank", probeSteps(step{argv: blkid, code: 2}, step{argv: wipefs}), "||"},
		{"ext4", probeSteps(
			step{argv: blkid, stdout: "DEVNAME=" + dev + "\nUUID=u-1\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n"},
			step{argv: wipefs, stdout: "ext4\n"},
		), "ext4|ext4|u-1"},
		{"gpt", probeSteps(
			step{argv: blkid, stdout: "DEVNAME=" + dev + "\nPTUUID=p\nPTTYPE=gpt\n"},
			step{argv: wipefs, stdout: "gpt\ngpt\nPMBR\n"},
		), "gpt,PMBR||"},
		{"lvm", probeSteps(
			step{argv: blkid, stdout: "UUID=l\nTYPE=LVM2_member\nUSAGE=raid\n"},
			step{argv: wipefs, stdout: "LVM2_member\n"},
		), "LVM2_member||"},
		{"ambivalent", probeSteps(
			step{argv: blkid, code: 8, stderr: "blkid: ambivalent result"},
			step{argv: wipefs, stdout: "xfs\next4\n"},
		), "ambivalent,xfs,ext4||"},
		// Only wipefs sees it (a backup superblock, say): still not blank.
		{"wipefs only", probeSteps(step{argv: blkid, code: 2}, step{argv: wipefs, stdout: "zfs_member\n"}), "zfs_member||"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := scripted(t, c.steps...).Probe(ctx, dev)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(p.Signatures, ",") + "|" + p.FSType + "|" + p.UUID; got != c.want {
				t.Fatalf("probe = %q, want %q", got, c.want)
			}
		})
	}
	t.Run("blkid fails", func(t *testing.T) {
		// wipefs runs too, at the same time; blkid's failure is the one told.
		_, err := scripted(t, probeSteps(step{argv: blkid, code: 4, stderr: "blkid: I/O error\n"}, step{argv: wipefs, code: 1, stderr: "wipefs: error"})...).Probe(ctx, dev)
		var te *ToolError
		if !errors.As(err, &te) || te.ExitCode != 4 || te.Output != "blkid: I/O error" || !strings.Contains(err.Error(), "blkid -p -o export") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("wipefs fails", func(t *testing.T) {
		_, err := scripted(t, probeSteps(step{argv: blkid, code: 2}, step{argv: wipefs, code: 1, stderr: "wipefs: error"})...).Probe(ctx, dev)
		if err == nil || !strings.Contains(err.Error(), "wipefs: error") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		if _, err := scripted(t).Probe(ctx, dev+"-missing"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestProbeRunsBothToolsAtOnce: blkid and wipefs run at the same time
// (each waits here until the other has started, so run one after the
// other, the first gives up), and the device stays open meanwhile, so
// that the second reader finds the first one's reads in the page cache.
func TestProbeRunsBothToolsAtOnce(t *testing.T) {
	dev := fakeDevice(t)
	blkidUp, wipefsUp := make(chan struct{}), make(chan struct{})
	meet := func(mine, other chan struct{}) func() {
		return func() {
			close(mine)
			select {
			case <-other:
			case <-time.After(10 * time.Second):
				t.Errorf("the other program did not start while this one ran")
			}
			if !openHere(t, dev) {
				t.Errorf("%s is not held open while the programs run", dev)
			}
		}
	}
	r := scripted(t, probeSteps(
		step{argv: "blkid -p -o export " + dev, code: 2, hook: meet(blkidUp, wipefsUp)},
		step{argv: "wipefs --no-act --noheadings --output TYPE " + dev, hook: meet(wipefsUp, blkidUp)},
	)...)
	if p, err := r.Probe(context.Background(), dev); err != nil || len(p.Signatures) != 0 {
		t.Fatalf("probe = %+v, %v", p, err)
	}
	if openHere(t, dev) {
		t.Errorf("%s is still open after the probe", dev)
	}
}

// openHere says whether this process has path open.
func openHere(t *testing.T, path string) bool {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && target == path {
			return true
		}
	}
	return false
}

func TestFormatCommandLines(t *testing.T) {
	ctx := context.Background()
	dev := fakeDevice(t)
	blank := probeSteps(step{argv: "blkid -p -o export " + dev, code: 2}, step{argv: "wipefs --no-act --noheadings --output TYPE " + dev})
	d := Ext4Defaults
	for _, c := range []struct {
		fs    string
		size  int64
		extra []string
		mkfs  string
	}{
		{"ext4", 0, nil, "mkfs.ext4 -q -U U -E " + d + " " + dev},
		{"ext4", 0, []string{"-m", "0", "-E", "stride=4"}, "mkfs.ext4 -q -U U -m 0 -E " + d + ",stride=4 " + dev},
		{"ext4", 4096, []string{"-L", "x"}, "mkfs.ext4 -q -U U -E " + d + " -L x " + dev + " 4k"},
		{"xfs", 0, []string{"-L", "x"}, "mkfs.xfs -q -K -m uuid=U -L x " + dev},
		{"xfs", 4096, []string{"-m", "reflink=1"}, "mkfs.xfs -q -K -m uuid=U,reflink=1 -d size=4096 " + dev},
	} {
		r := scripted(t, append(blank, step{argv: c.mkfs})...)
		if err := r.Format(ctx, dev, c.fs, "U", c.size, c.extra); err != nil {
			t.Errorf("%s: %v", c.mkfs, err)
		}
	}
}

func TestFormatErrors(t *testing.T) {
	ctx := context.Background()
	dev := fakeDevice(t)
	blkid, wipefs := "blkid -p -o export "+dev, "wipefs --no-act --noheadings --output TYPE "+dev
	// Not blank: mkfs never runs.
	r := scripted(t, probeSteps(step{argv: blkid, stdout: "TYPE=xfs\nUSAGE=filesystem\n"}, step{argv: wipefs, stdout: "xfs\n"})...)
	if err := r.Format(ctx, dev, "ext4", "U", 0, nil); !errors.Is(err, ErrNotBlank) || !strings.Contains(err.Error(), "xfs") {
		t.Fatalf("format over xfs: %v", err)
	}
	// Bad arguments: nothing runs at all.
	if err := scripted(t).Format(ctx, dev, "vfat", "U", 0, nil); !errors.Is(err, ErrUnsupportedFS) {
		t.Fatalf("vfat: %v", err)
	}
	if err := scripted(t).Format(ctx, dev, "ext4", "U", 0, []string{"-E"}); !errors.Is(err, ErrInvalidMkfsArgs) {
		t.Fatalf("dangling -E: %v", err)
	}
	// A failing mkfs: its output, trimmed and bounded, is in the error.
	long := strings.Repeat("x", 10000)
	r = scripted(t, append(probeSteps(step{argv: blkid, code: 2}, step{argv: wipefs}),
		step{argv: "mkfs.xfs -q -K -m uuid=U " + dev, code: 1, stderr: "\n  mkfs.xfs: too small\n" + long, stdout: "usage"})...)
	err := r.Format(ctx, dev, "xfs", "U", 0, nil)
	var te *ToolError
	if !errors.As(err, &te) || te.ExitCode != 1 || !strings.HasPrefix(te.Output, "mkfs.xfs: too small") ||
		!strings.HasSuffix(te.Output, "...(truncated)") || len(te.Output) > maxOutput+len("...(truncated)") {
		t.Fatalf("mkfs failure: %v", err)
	}
	if !strings.HasPrefix(err.Error(), "mkfs.xfs -q -K -m uuid=U "+dev+": exit 1: mkfs.xfs: too small") {
		t.Fatalf("message: %.120s", err.Error())
	}
}

func TestFormatKeepsTail(t *testing.T) {
	ctx := context.Background()
	dev := fakeDevice(t) // 8192 bytes
	if err := os.WriteFile(dev, []byte(strings.Repeat("a", 4096)+strings.Repeat("P", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	fe := &testingexec.FakeExec{}
	for range 2 { // the probe: blkid finds nothing (exit 2), nor does wipefs
		fe.CommandScript = append(fe.CommandScript, func(cmd string, args ...string) utilexec.Cmd {
			fc := &testingexec.FakeCmd{RunScript: []testingexec.FakeAction{func() ([]byte, []byte, error) {
				if cmd == "blkid" {
					return nil, nil, testingexec.FakeExitError{Status: 2}
				}
				return nil, nil, nil
			}}}
			return testingexec.InitFakeCmd(fc, cmd, args...)
		})
	}
	// "mkfs" zeroes the whole file, as mkfs.xfs zeroes a device's end.
	fe.CommandScript = append(fe.CommandScript, func(cmd string, args ...string) utilexec.Cmd {
		fc := &testingexec.FakeCmd{RunScript: []testingexec.FakeAction{func() ([]byte, []byte, error) {
			return nil, nil, os.WriteFile(dev, make([]byte, 8192), 0o600)
		}}}
		return testingexec.InitFakeCmd(fc, cmd, args...)
	})
	r := NewWithOptions(Options{Exec: fe})
	if err := r.Format(ctx, dev, "xfs", "U", 4096, nil); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(dev)
	if string(b[4096:]) != strings.Repeat("P", 4096) || string(b[:4096]) != string(make([]byte, 4096)) {
		t.Fatalf("tail not restored or head restored too: %q...%q", b[:8], b[4096:4104])
	}
}

func TestUnmountAndWipeCommandLines(t *testing.T) {
	r := scripted(t, step{argv: "umount /t"}, step{argv: "umount /t", code: 32, stderr: "umount: /t: not mounted."})
	if err := r.Unmount("/t"); err != nil {
		t.Fatal(err)
	}
	if err := r.Unmount("/t"); err == nil || !strings.Contains(err.Error(), "not mounted") {
		t.Fatalf("second unmount: %v", err)
	}
	// An unknown policy runs nothing.
	if err := scripted(t).Wipe(context.Background(), "/dev/x", "scrub", WipeOptions{}); !errors.Is(err, ErrUnknownPolicy) {
		t.Fatalf("unknown policy: %v", err)
	}
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := New().run(ctx, "sleep", "10")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("sleep under a 50ms deadline: %v after %v", err, time.Since(start))
	}
	var te *ToolError
	if !errors.As(err, &te) || te.ExitCode != -1 {
		t.Fatalf("exit code of a killed tool: %v", err)
	}
	if _, err := New().run(context.Background(), "no-such-tool-xyz"); err == nil {
		t.Fatal("a missing tool ran")
	}
}

func TestMountInfoPath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mountinfo")
	line := "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
	if err := os.WriteFile(p, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	infos, err := NewWithOptions(Options{MountInfoPath: p}).MountInfo()
	if err != nil || len(infos) != 1 || infos[0].Major != 98 || infos[0].MountPoint != "/mnt/parent" || infos[0].FsType != "ext3" {
		t.Fatalf("%+v %v", infos, err)
	}
	if _, err := New().MountInfo(); err != nil {
		t.Fatalf("default mountinfo: %v", err)
	}
}
