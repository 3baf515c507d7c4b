package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// StaticConfig configures the static source: a fixed list of device paths and
// globs, for bare metal, other clouds and loop-device tests.
type StaticConfig struct {
	// Patterns are absolute device paths or filepath.Match globs, e.g.
	// /dev/vd[b-z] or /dev/disk/by-id/nvme-*. At least one is required. A
	// glob is safe only where no other driver attaches disks it matches:
	// a blank, unused disk that another driver has attached but not yet
	// mounted or published looks free.
	Patterns []string
	// SysRoot is the sysfs mount, default /sys.
	SysRoot string
	// DevRoot is the device directory, default /dev.
	DevRoot string
	// MountInfoPath is the mount table in proc(5) mountinfo format, default
	// /proc/self/mountinfo. Its devtmpfs and tmpfs mount points are stat'ed
	// as this process sees them, so it must be this process's own table.
	MountInfoPath string
	// Prober reads signatures; required.
	Prober Prober
	// SkipPartitions leaves out partitions that a glob matched instead of
	// reporting them as problems (for broad globs like /dev/vd*).
	SkipPartitions bool
}

// PlaceholderPattern is the device pattern the static deploy overlay ships
// with. NewStatic refuses it (ErrPlaceholderPattern), so that a driver
// deployed before an operator listed the node's local disks stops at
// start-up with a clear error instead of guessing from device names: a
// glob such as /dev/vd* also matches the cloud disks that another driver
// attaches to the node.
const PlaceholderPattern = "/dev/REPLACE-WITH-THE-NODE-LOCAL-DISKS"

// ErrPlaceholderPattern is NewStatic's error for PlaceholderPattern.
var ErrPlaceholderPattern = errors.New("the device list is still the placeholder " + PlaceholderPattern +
	": list the node's local disks explicitly (/dev/disk/by-id links or exact device paths; no glob that can match a cloud disk another driver attaches)")

// Static is a Source that considers exactly the devices its patterns name.
// It reads sysfs, the mount table and the prober, and never writes to a
// device. It is safe for concurrent use.
type Static struct {
	cfg StaticConfig
	fs  sysfs
}

var _ Source = (*Static)(nil)

// NewStatic checks cfg (at least one pattern, every pattern absolute with
// valid glob syntax and none the PlaceholderPattern, a prober), fills in
// the default roots and returns the source. It does not look at any
// device.
func NewStatic(cfg StaticConfig) (*Static, error) {
	if len(cfg.Patterns) == 0 {
		return nil, errors.New("static disk source: no device patterns")
	}
	for _, p := range cfg.Patterns {
		if p == PlaceholderPattern {
			return nil, fmt.Errorf("static disk source: %w", ErrPlaceholderPattern)
		}
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("static disk source: pattern %q is not an absolute path", p)
		}
		if _, err := filepath.Match(p, p); err != nil {
			return nil, fmt.Errorf("static disk source: pattern %q: %w", p, err)
		}
	}
	if cfg.Prober == nil {
		return nil, errors.New("static disk source: no prober")
	}
	cfg.Patterns = append([]string(nil), cfg.Patterns...)
	cfg.SysRoot = orDefault(cfg.SysRoot, "/sys")
	cfg.DevRoot = orDefault(cfg.DevRoot, "/dev")
	cfg.MountInfoPath = orDefault(cfg.MountInfoPath, "/proc/self/mountinfo")
	return &Static{cfg: cfg, fs: sysfs{root: cfg.SysRoot, dev: cfg.DevRoot}}, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// mountState is what one discovery knows about mounts: the mount table,
// the devices the system runs from, and where device nodes are bound
// (MAJ:MIN -> mount points).
type mountState struct {
	table  mountTable
	system map[string]bool
	binds  map[string][]string
}

// Discover expands the patterns in order and describes every whole block
// device they name, each once however many patterns or links name it.
// A pattern that matches nothing, a path that is not a block device or is a
// partition (unless SkipPartitions), and a device without a stable identity
// are reported as problems and left out. A device whose signatures cannot be
// read is returned with the signature "unknown: probe failed", never as
// blank, and a problem. A device whose node (or a partition's) is
// bind-mounted somewhere, as the kubelet does to publish any raw block
// volume, is reported Mounted, with the mount points in DeviceNodeBinds.
// Each call reads the mount table once and stats only the mount points of
// devtmpfs and tmpfs binds. The error is for an unreadable mount table or a
// cancelled ctx only.
func (s *Static) Discover(ctx context.Context) ([]Disk, []error, error) {
	table, err := readMountTable(s.cfg.MountInfoPath)
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", s.cfg.MountInfoPath, err)
	}
	ms := mountState{table: table, system: s.fs.systemDisks(table), binds: deviceNodeBinds(table.nodeMounts)}
	var (
		disks    []Disk
		problems []error
		seen     = map[string]bool{}
	)
	for _, pattern := range s.cfg.Patterns {
		matches, _ := filepath.Glob(pattern) // syntax checked in NewStatic
		if len(matches) == 0 {
			problems = append(problems, fmt.Errorf("%s: %w", pattern, ErrNoDevice))
		}
		for _, path := range matches {
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
			name, err := s.kernelName(path)
			if errors.Is(err, errPartition) && s.cfg.SkipPartitions {
				continue
			}
			if err != nil {
				problems = append(problems, err)
				continue
			}
			if seen[name] {
				continue
			}
			seen[name] = true
			d, err := s.describe(ctx, name, path, ms)
			if err != nil {
				problems = append(problems, err)
			}
			if d.ID != "" {
				disks = append(disks, d)
			}
		}
	}
	return disks, problems, nil
}

// Identify reads the identity of the whole disk now at path, from sysfs
// only (no probe), by the same rules as Discover: it returns the same ID and
// Identity that Discover gives that disk.
func (s *Static) Identify(_ context.Context, path string) (string, string, error) {
	name, err := s.kernelName(path)
	if err != nil {
		return "", "", err
	}
	kind, value := s.fs.identity(name)
	if kind == "" {
		return "", "", fmt.Errorf("%s: %w", path, errNoIdentity)
	}
	return MakeID(kind, value), kind + ":" + value, nil
}

// String describes the source for logs.
func (s *Static) String() string { return "static:" + strings.Join(s.cfg.Patterns, ",") }

// ErrNoDevice is the discovery problem of a device entry that names no
// device: a pattern that matches nothing, or a link to a device that is gone.
var ErrNoDevice = errors.New("no such device")

var (
	errPartition  = errors.New("is partition")
	errNoIdentity = errors.New("no stable identity (no serial, WWN, by-id link or loop backing file)")
)

// kernelName resolves a device path (through any links) to the kernel name
// of the whole disk it is.
func (s *Static) kernelName(path string) (string, error) {
	majMin, err := blockDevNumber(path)
	if err != nil {
		return "", err
	}
	name, parent, err := s.fs.resolve(majMin, s.nameHint(path))
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if parent != "" {
		return "", fmt.Errorf("%s: %w %s of %s; the driver uses whole disks only", path, errPartition, name, parent)
	}
	return name, nil
}

// nameHint guesses the kernel name of a device path from its place below
// DevRoot, after links; "" when it is elsewhere.
func (s *Static) nameHint(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	rel, err := filepath.Rel(s.cfg.DevRoot, path)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return ""
	}
	return kernelNameOf(rel)
}

// blockDevNumber returns "MAJ:MIN" of the block device at path, following
// links.
func blockDevNumber(path string) (string, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%s: %w", path, ErrNoDevice)
	}
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 || !ok {
		return "", fmt.Errorf("%s: not a block device", path)
	}
	return fmt.Sprintf("%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))), nil
}

// describe reads one whole disk's identity and facts; path is how the
// patterns named it. A disk without identity comes back empty with an
// error; a disk whose signatures could not be read comes back with a
// placeholder signature (never blank) and an error.
func (s *Static) describe(ctx context.Context, name, path string, ms mountState) (Disk, error) {
	kind, value := s.fs.identity(name)
	if kind == "" {
		return Disk{}, fmt.Errorf("%s: %w", path, errNoIdentity)
	}
	bi, err := s.fs.info(name)
	if err != nil {
		return Disk{}, err
	}
	d := Disk{
		ID: MakeID(kind, value), Identity: kind + ":" + value,
		Path: s.nodePath(name, bi.majMin, path), Name: name, DevNum: bi.majMin,
		SizeBytes: bi.sizeBytes, Media: MediaSSD,
		Facts: Facts{
			System: ms.system[name], Mounted: ms.table.mounted[bi.majMin],
			Partitioned: len(bi.partitions) > 0, DeviceMapper: bi.dm,
			Holders: bi.holders, ReadOnly: bi.readOnly,
		},
	}
	if bi.rotational {
		d.Media = MediaHDD
	}
	binds := append([]string(nil), ms.binds[bi.majMin]...)
	for _, p := range bi.partitions {
		d.Facts.Mounted = d.Facts.Mounted || ms.table.mounted[p]
		binds = append(binds, ms.binds[p]...)
	}
	if len(binds) > 0 {
		d.Facts.Mounted = true
		d.Facts.DeviceNodeBinds = binds
	}
	p, err := s.cfg.Prober.Probe(ctx, d.Path)
	if err != nil {
		d.Facts.Signatures = []string{"unknown: probe failed"}
		return d, fmt.Errorf("%s: reading signatures: %w", d.Path, err)
	}
	d.Facts.Signatures, d.Facts.FSUUID = p.Signatures, p.UUID
	return d, nil
}

// nodePath is the device node to report for a disk: DevRoot/<name> when it
// is that very device, else the path the patterns gave.
func (s *Static) nodePath(name, majMin, given string) string {
	p := s.fs.devPath(name)
	if got, err := blockDevNumber(p); err == nil && got == majMin {
		return p
	}
	return given
}
