package disk

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// blkidProber is a minimal real prober for this package's tests.
type blkidProber struct{}

func (blkidProber) Probe(_ context.Context, dev string) (Probe, error) {
	out, err := exec.Command("blkid", "-p", "-o", "export", dev).Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return Probe{}, nil
	}
	if err != nil {
		return Probe{}, err
	}
	var p Probe
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "TYPE", "PTTYPE":
			p.Signatures = append(p.Signatures, v)
			if k == "TYPE" {
				p.FSType = v
			}
		case "UUID":
			p.UUID = v
		}
	}
	return p, nil
}

func TestNewStaticValidates(t *testing.T) {
	for _, cfg := range []StaticConfig{
		{Prober: blkidProber{}},
		{Patterns: []string{"dev/vdb"}, Prober: blkidProber{}},
		{Patterns: []string{"/dev/vd[b"}, Prober: blkidProber{}},
		{Patterns: []string{"/dev/vdb"}},
	} {
		if _, err := NewStatic(cfg); err == nil {
			t.Errorf("NewStatic(%+v) accepted", cfg)
		}
	}
}

func TestStaticDiscoverLoopDevices(t *testing.T) {
	blank := testutil.NewLoop(t, "", 32<<20)
	formatted := testutil.NewLoop(t, "", 32<<20)
	mounted := testutil.NewLoop(t, "", 48<<20)
	for _, l := range []testutil.Loop{formatted, mounted} {
		if out, err := exec.Command("mkfs.ext4", "-q", l.Path).CombinedOutput(); err != nil {
			t.Fatalf("mkfs: %v %s", err, out)
		}
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", mounted.Path, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	testutil.SetRotational(t, blank.Path, false)
	testutil.SetRotational(t, formatted.Path, true)

	src, err := NewStatic(StaticConfig{Patterns: []string{blank.Path, formatted.Path, mounted.Path, blank.Path, "/dev/no-such-disk"}, Prober: blkidProber{}})
	if err != nil {
		t.Fatal(err)
	}
	disks, problems, err := src.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), "no-such-disk") {
		t.Fatalf("problems %v", problems)
	}
	if len(disks) != 3 {
		t.Fatalf("%d disks (a path given twice must count once): %+v", len(disks), disks)
	}
	byPath := map[string]Disk{}
	for _, d := range disks {
		byPath[d.Path] = d
		if !strings.HasPrefix(d.ID, "loop-") || !strings.HasPrefix(d.Identity, "loop:") {
			t.Errorf("identity of %s: %s %s", d.Path, d.ID, d.Identity)
		}
	}
	b, f, m := byPath[blank.Path], byPath[formatted.Path], byPath[mounted.Path]
	if b.Identity != "loop:"+blank.Backing || b.SizeBytes != 32<<20 || b.Media != MediaSSD || len(b.Facts.Signatures) != 0 || b.Facts.Mounted {
		t.Errorf("blank: %+v", b)
	}
	if f.Media != MediaHDD || len(f.Facts.Signatures) != 1 || f.Facts.Signatures[0] != "ext4" || f.Facts.FSUUID == "" || f.Facts.Mounted {
		t.Errorf("formatted: %+v", f)
	}
	if !m.Facts.Mounted || m.SizeBytes != 48<<20 {
		t.Errorf("mounted: %+v", m)
	}
	id, identity, err := src.Identify(context.Background(), blank.Path)
	if err != nil || id != b.ID || identity != b.Identity {
		t.Errorf("Identify = %s %s %v, want %s", id, identity, err, b.ID)
	}
	// A glob finds the same devices.
	glob, _ := NewStatic(StaticConfig{Patterns: []string{filepath.Join(filepath.Dir(blank.Path), filepath.Base(blank.Path)[:4]+"*")}, Prober: blkidProber{}})
	all, _, _ := glob.Discover(context.Background())
	found := 0
	for _, d := range all {
		if d.ID == b.ID || d.ID == f.ID || d.ID == m.ID {
			found++
		}
	}
	if found != 3 {
		t.Errorf("glob found %d of the 3 loop devices", found)
	}
}

// TestStaticFlagsTheSystemDisk passes the root filesystem's disk as a pattern.
func TestStaticFlagsTheSystemDisk(t *testing.T) {
	testutil.RequireRoot(t)
	root := ""
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 9 && f[4] == "/" {
			if i := strings.Index(l, " - "); i > 0 {
				root = strings.Fields(l[i+3:])[1]
			}
		}
	}
	if fi, err := os.Stat(root); err != nil || fi.Mode()&os.ModeDevice == 0 {
		t.Skipf("root filesystem source %q is not a block device here (overlay or container root)", root)
	}
	src, _ := NewStatic(StaticConfig{Patterns: []string{root}, Prober: blkidProber{}})
	disks, problems, err := src.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) == 0 {
		t.Skipf("root device %s has no stable identity here: %v", root, problems)
	}
	if !disks[0].Facts.System || !disks[0].Facts.Mounted {
		t.Fatalf("root disk facts: %+v", disks[0].Facts)
	}
}
