package disk

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// blkidProber is a minimal real prober for this package's tests: blkid -p
// reads the device itself (no cache), exit code 2 means nothing found. blkid
// also exits 2 when it cannot open the device (as for the root disk of a
// sandbox), so the device is read first: unreadable must not mean blank.
type blkidProber struct{}

func (blkidProber) Probe(_ context.Context, dev string) (Probe, error) {
	f, err := os.Open(dev)
	if err != nil {
		return Probe{}, err
	}
	_, err = f.Read(make([]byte, 512))
	f.Close()
	if err != nil {
		return Probe{}, fmt.Errorf("reading %s: %w", dev, err)
	}
	out, err := exec.Command("blkid", "-p", "-o", "export", dev).Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return Probe{}, nil
	}
	if err != nil {
		return Probe{}, fmt.Errorf("blkid -p %s: %w", dev, err)
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

// failingProber always fails.
type failingProber struct{}

func (failingProber) Probe(context.Context, string) (Probe, error) {
	return Probe{}, errors.New("probe broke")
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func mustStatic(t *testing.T, cfg StaticConfig) *Static {
	t.Helper()
	if cfg.Prober == nil {
		cfg.Prober = blkidProber{}
	}
	s, err := NewStatic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func discover(t *testing.T, s *Static) (map[string]Disk, []error) {
	t.Helper()
	disks, problems, err := s.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Disk{}
	for _, d := range disks {
		if _, dup := byName[d.Name]; dup {
			t.Errorf("%s listed twice", d.Name)
		}
		byName[d.Name] = d
	}
	return byName, problems
}

func TestNewStaticValidates(t *testing.T) {
	for _, tc := range []struct {
		cfg  StaticConfig
		want string
	}{
		{StaticConfig{Prober: blkidProber{}}, "no device patterns"},
		{StaticConfig{Patterns: []string{"dev/vdb"}, Prober: blkidProber{}}, `"dev/vdb"`},
		{StaticConfig{Patterns: []string{"/dev/vdb", "/dev/vd[b"}, Prober: blkidProber{}}, `"/dev/vd[b"`},
		{StaticConfig{Patterns: []string{"/dev/vdb"}}, "no prober"},
		{StaticConfig{Patterns: []string{"/dev/vdb", PlaceholderPattern}, Prober: blkidProber{}}, "still the placeholder"},
	} {
		if _, err := NewStatic(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewStatic(%+v) = %v, want an error with %s", tc.cfg, err, tc.want)
		}
	}
	if _, err := NewStatic(StaticConfig{Patterns: []string{PlaceholderPattern}, Prober: blkidProber{}}); !errors.Is(err, ErrPlaceholderPattern) {
		t.Errorf("NewStatic(placeholder) = %v, want ErrPlaceholderPattern", err)
	}
	s, err := NewStatic(StaticConfig{Patterns: []string{"/dev/vd[b-z]", "/dev/nvme*n1"}, Prober: blkidProber{}})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.SysRoot != "/sys" || s.cfg.DevRoot != "/dev" || s.cfg.MountInfoPath != "/proc/self/mountinfo" {
		t.Errorf("defaults: %+v", s.cfg)
	}
	if got := s.String(); got != "static:/dev/vd[b-z],/dev/nvme*n1" {
		t.Errorf("String() = %s", got)
	}
}

// mknod makes a block device node for majMin at path; it skips the test
// where nodes cannot be made.
func mknod(t *testing.T, path, majMin string, mode uint32) {
	t.Helper()
	var maj, min uint32
	if _, err := fmt.Sscanf(majMin, "%d:%d", &maj, &min); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(path, mode|0o600, int(unix.Mkdev(maj, min))); err != nil {
		t.Skipf("cannot make device nodes here: %v", err)
	}
}

// TestStaticDiscoverFakeTree runs the whole discovery over the fake sysfs
// tree, with device nodes made for it (they are never opened: the prober is
// a fake).
func TestStaticDiscoverFakeTree(t *testing.T) {
	testutil.RequireRoot(t)
	f := standardTree(t)
	for name, majMin := range f.majMin {
		mknod(t, filepath.Join(f.dev, name), majMin, unix.S_IFBLK)
	}
	other := t.TempDir()
	mknod(t, filepath.Join(other, "weird-name"), f.majMin["vdb"], unix.S_IFBLK)
	mknod(t, filepath.Join(other, "char"), "1:3", unix.S_IFCHR)
	f.symlink(filepath.Join(f.dev, "sda"), filepath.Join(other, "link-to-sda"))
	f.writeFile(filepath.Join(other, "file.img"), "")
	cfg := StaticConfig{
		Patterns: []string{f.dev + "/vd[a-z]", f.dev + "/vdc1", f.dev + "/nvme0n1", f.dev + "/sda",
			f.dev + "/loop*", other + "/*", f.dev + "/missing"},
		SysRoot: f.sys, DevRoot: f.dev, MountInfoPath: f.mountinfo,
		Prober: mapProber{filepath.Join(f.dev, "vdc"): {Probe: Probe{Signatures: []string{"gpt"}}}},
	}
	src := mustStatic(t, cfg)
	disks, problems, err := src.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range disks {
		names = append(names, d.Name)
		if d.Path != filepath.Join(f.dev, d.Name) {
			t.Errorf("%s: path %s", d.Name, d.Path)
		}
	}
	// Pattern order; the link to sda and the weird node of vdb count once.
	if got, want := strings.Join(names, " "), "vdb vdc vdd vde vdf nvme0n1 sda loop0"; got != want {
		t.Errorf("disks %s, want %s", got, want)
	}
	wantProblems := []string{"vda: no stable identity", "vdc1: is partition vdc1 of vdc", "loop1: no stable identity",
		"char: not a block device", "file.img: not a block device", "missing: no such device"}
	if len(problems) != len(wantProblems) {
		t.Errorf("problems %v, want %d", problems, len(wantProblems))
	}
	for i, p := range problems {
		if i < len(wantProblems) && !strings.Contains(p.Error(), wantProblems[i]) {
			t.Errorf("problem %d = %v, want %q", i, p, wantProblems[i])
		}
	}
	vdc := disks[1]
	if !vdc.Facts.Partitioned || !vdc.Facts.Mounted || len(vdc.Facts.Signatures) != 1 || vdc.Facts.Holders[0] != "dm-0" {
		t.Errorf("vdc: %+v", vdc)
	}
	if vdf := disks[4]; !vdf.Facts.System {
		t.Errorf("vdf holds /boot: %+v", vdf)
	}

	ctx := context.Background()
	if id, identity, err := src.Identify(ctx, filepath.Join(other, "weird-name")); err != nil || id != "serial-bp1abcdef" || identity != "serial:bp1abcdef" {
		t.Errorf("Identify(weird-name) = %s %s %v", id, identity, err)
	}
	if id, _, err := src.Identify(ctx, filepath.Join(other, "link-to-sda")); err != nil || id != disks[6].ID {
		t.Errorf("Identify(link-to-sda) = %s %v, want %s", id, err, disks[6].ID)
	}
	if _, _, err := src.Identify(ctx, filepath.Join(f.dev, "vdc1")); !errors.Is(err, errPartition) {
		t.Errorf("Identify(partition) = %v", err)
	}
	if _, _, err := src.Identify(ctx, filepath.Join(f.dev, "vda")); !errors.Is(err, errNoIdentity) {
		t.Errorf("Identify(vda) = %v", err)
	}
	if _, _, err := src.Identify(ctx, filepath.Join(f.dev, "missing")); err == nil {
		t.Error("Identify(missing) succeeded")
	}

	// SkipPartitions drops the partition silently.
	cfg.SkipPartitions = true
	if _, problems, _ := mustStatic(t, cfg).Discover(ctx); len(problems) != len(wantProblems)-1 {
		t.Errorf("with SkipPartitions: %v", problems)
	}

	// Without /sys/dev/block/MAJ:MIN a node under DevRoot is still found by
	// its name; a node elsewhere is not.
	if err := os.Remove(filepath.Join(f.sys, "dev/block", f.majMin["vdb"])); err != nil {
		t.Fatal(err)
	}
	src = mustStatic(t, StaticConfig{Patterns: []string{f.dev + "/vdb", other + "/weird-name"},
		SysRoot: f.sys, DevRoot: f.dev, MountInfoPath: f.mountinfo, Prober: mapProber{}})
	got, problems := discover(t, src)
	if len(got) != 1 || got["vdb"].ID != "serial-bp1abcdef" || len(problems) != 1 || !strings.Contains(problems[0].Error(), "weird-name") {
		t.Errorf("by name hint: %+v %v", got, problems)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := src.Discover(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("Discover(cancelled) = %v", err)
	}
	bad := mustStatic(t, StaticConfig{Patterns: []string{"/dev/null"}, MountInfoPath: filepath.Join(other, "none")})
	if _, _, err := bad.Discover(ctx); err == nil {
		t.Error("Discover without a mount table succeeded")
	}
}

func TestStaticDiscoverLoopDevices(t *testing.T) {
	blank := testutil.NewLoop(t, "", 32<<20)
	formatted := testutil.NewLoop(t, "", 32<<20)
	mounted := testutil.NewLoop(t, "", 48<<20)
	for _, l := range []testutil.Loop{formatted, mounted} {
		run(t, "mkfs.ext4", "-q", l.Path)
	}
	mnt := t.TempDir()
	run(t, "mount", mounted.Path, mnt)
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	testutil.SetRotational(t, blank.Path, false)
	testutil.SetRotational(t, formatted.Path, true)

	// Other names for blank: a link and a node of our own.
	other := t.TempDir()
	if err := os.Symlink(blank.Path, filepath.Join(other, "link")); err != nil {
		t.Fatal(err)
	}
	majMin, err := blockDevNumber(blank.Path)
	if err != nil {
		t.Fatal(err)
	}
	mknod(t, filepath.Join(other, "odd-node"), majMin, unix.S_IFBLK)

	// The other names come first: the disk's path must still be /dev/loopN.
	src := mustStatic(t, StaticConfig{Patterns: []string{other + "/*", blank.Path, formatted.Path, mounted.Path,
		blank.Path, blank.Backing, "/dev/no-such-disk"}})
	disks, problems := discover(t, src)
	if len(problems) != 2 || !strings.Contains(problems[0].Error(), blank.Backing+": not a block device") ||
		!strings.Contains(problems[1].Error(), "/dev/no-such-disk: no such device") {
		t.Fatalf("problems %v", problems)
	}
	if len(disks) != 3 {
		t.Fatalf("%d disks (one device named four ways must count once): %+v", len(disks), disks)
	}
	b, f, m := disks[filepath.Base(blank.Path)], disks[filepath.Base(formatted.Path)], disks[filepath.Base(mounted.Path)]
	for l, d := range map[testutil.Loop]Disk{blank: b, formatted: f, mounted: m} {
		if d.Path != l.Path || !strings.HasPrefix(d.ID, "loop-") || d.Identity != "loop:"+l.Backing || d.ID != MakeID("loop", l.Backing) {
			t.Errorf("identity of %s: %+v", l.Path, d)
		}
		id, identity, err := src.Identify(context.Background(), l.Path)
		if err != nil || id != d.ID || identity != d.Identity {
			t.Errorf("Identify(%s) = %s %s %v, want %s", l.Path, id, identity, err, d.ID)
		}
		if d.Facts.System || d.Facts.Partitioned || d.Facts.DeviceMapper || d.Facts.ReadOnly || d.Facts.Holders != nil {
			t.Errorf("facts of %s: %+v", l.Path, d.Facts)
		}
	}
	if b.SizeBytes != 32<<20 || b.Media != MediaSSD || len(b.Facts.Signatures) != 0 || b.Facts.FSUUID != "" || b.Facts.Mounted {
		t.Errorf("blank: %+v", b)
	}
	if f.SizeBytes != 32<<20 || f.Media != MediaHDD || len(f.Facts.Signatures) != 1 || f.Facts.Signatures[0] != "ext4" ||
		f.Facts.FSUUID == "" || f.Facts.Mounted {
		t.Errorf("formatted: %+v", f)
	}
	if !m.Facts.Mounted || m.SizeBytes != 48<<20 || m.Facts.Signatures[0] != "ext4" {
		t.Errorf("mounted: %+v", m)
	}
	for _, p := range []string{filepath.Join(other, "link"), filepath.Join(other, "odd-node")} {
		if id, _, err := src.Identify(context.Background(), p); err != nil || id != b.ID {
			t.Errorf("Identify(%s) = %s %v, want %s", p, id, err, b.ID)
		}
	}

	// Media and the read-only flag are read afresh on every discovery.
	testutil.SetRotational(t, blank.Path, true)
	testutil.SetRotational(t, formatted.Path, false)
	run(t, "blockdev", "--setro", mounted.Path)
	disks, _ = discover(t, src)
	if disks[b.Name].Media != MediaHDD || disks[f.Name].Media != MediaSSD || !disks[m.Name].Facts.ReadOnly {
		t.Errorf("after flipping rotational and ro: %+v", disks)
	}

	// A glob finds the same devices; loop-control and idle loop devices
	// become problems, not disks.
	glob := mustStatic(t, StaticConfig{Patterns: []string{"/dev/loop*"}})
	all, problems := discover(t, glob)
	for _, d := range []Disk{b, f, m} {
		if all[d.Name].ID != d.ID {
			t.Errorf("glob: %s = %+v, want ID %s", d.Name, all[d.Name], d.ID)
		}
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Error(), "/dev/loop-control: ") && !strings.Contains(p.Error(), "not a block device") {
			t.Errorf("loop-control: %v", p)
		}
	}
}

// TestStaticPartitionedLoop adds partitions to a loop device with partx
// (the kernel here may lack partition-table parsers) and mounts one.
func TestStaticPartitionedLoop(t *testing.T) {
	l := testutil.NewLoop(t, "", 32<<20)
	sfdisk := exec.Command("sfdisk", "-q", "--no-reread", "--no-tell-kernel", l.Path)
	sfdisk.Stdin = strings.NewReader("label: gpt\n,8M\n,\n")
	if out, err := sfdisk.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	run(t, "partx", "-a", l.Path)
	t.Cleanup(func() { _ = exec.Command("partx", "-d", l.Path).Run() })
	part := l.Path + "p1"
	waitFor(t, part)
	run(t, "mkfs.ext4", "-q", part)
	mnt := t.TempDir()
	run(t, "mount", part, mnt)
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })

	cfg := StaticConfig{Patterns: []string{l.Path, part}}
	disks, problems := discover(t, mustStatic(t, cfg))
	d := disks[filepath.Base(l.Path)]
	if len(disks) != 1 || !d.Facts.Partitioned || !d.Facts.Mounted || d.Facts.System || len(d.Facts.Signatures) == 0 || d.Facts.Signatures[0] != "gpt" {
		t.Errorf("partitioned loop: %+v", disks)
	}
	if len(problems) != 1 || !errors.Is(problems[0], errPartition) {
		t.Errorf("problems %v, want the partition", problems)
	}
	cfg.SkipPartitions = true
	if _, problems := discover(t, mustStatic(t, cfg)); len(problems) != 0 {
		t.Errorf("problems with SkipPartitions: %v", problems)
	}
	if _, _, err := mustStatic(t, cfg).Identify(context.Background(), part); !errors.Is(err, errPartition) {
		t.Errorf("Identify(partition) = %v", err)
	}
}

func waitFor(t *testing.T, path string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not appear", path)
}

// TestStaticProbeFailureIsNeverBlank: a device whose signatures cannot be
// read is still listed, with a placeholder signature and a problem.
func TestStaticProbeFailureIsNeverBlank(t *testing.T) {
	l := testutil.NewLoop(t, "", 16<<20)
	disks, problems := discover(t, mustStatic(t, StaticConfig{Patterns: []string{l.Path}, Prober: failingProber{}}))
	d := disks[filepath.Base(l.Path)]
	if len(d.Facts.Signatures) != 1 || d.Facts.Signatures[0] != "unknown: probe failed" {
		t.Errorf("disk %+v", d)
	}
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), "probe broke") {
		t.Errorf("problems %v", problems)
	}
}

// TestStaticSameBackingFileTwice: two loop devices on one file share an
// identity; both are listed, and the inventory refuses the pair.
func TestStaticSameBackingFileTwice(t *testing.T) {
	a := testutil.NewLoop(t, "", 16<<20)
	b, err := testutil.Attach(a.Backing)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.Detach(b.Path) })
	disks, _ := discover(t, mustStatic(t, StaticConfig{Patterns: []string{a.Path, b.Path}}))
	da, db := disks[filepath.Base(a.Path)], disks[filepath.Base(b.Path)]
	if len(disks) != 2 || da.ID == "" || da.ID != db.ID {
		t.Errorf("disks %+v", disks)
	}
}

// TestStaticFlagsTheSystemDisk passes the root filesystem's disk as a pattern.
func TestStaticFlagsTheSystemDisk(t *testing.T) {
	testutil.RequireRoot(t)
	root := ""
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == "/" {
			root = mountSource(f)
		}
	}
	if fi, err := os.Stat(root); err != nil || fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		t.Skipf("root filesystem source %q is not a block device here (overlay or container root)", root)
	}
	src := mustStatic(t, StaticConfig{Patterns: []string{root}, SkipPartitions: true})
	name, err := src.kernelName(root)
	if errors.Is(err, errPartition) {
		// Root on a partition: pass the whole disk instead.
		mm, _ := blockDevNumber(root)
		_, parent, _ := src.fs.nameOf(mm)
		root = filepath.Join("/dev", parent)
		src = mustStatic(t, StaticConfig{Patterns: []string{root}})
	} else if err != nil {
		t.Fatal(err)
	}
	disks, problems := discover(t, src)
	if len(disks) == 0 {
		t.Skipf("root device %s (%s) has no stable identity here: %v", root, name, problems)
	}
	for _, d := range disks {
		// Signatures: the filesystem, or the placeholder when the device
		// cannot be read (as in some sandboxes); never blank.
		if !d.Facts.System || !d.Facts.Mounted || len(d.Facts.Signatures) == 0 {
			t.Fatalf("root disk %s: %+v", root, d)
		}
	}
}
