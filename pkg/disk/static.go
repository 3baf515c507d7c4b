package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// StaticConfig configures the static source: a fixed list of device paths and
// globs, for bare metal, other clouds and loop-device tests.
type StaticConfig struct {
	// Patterns are absolute device paths or globs, e.g. /dev/vd[b-z].
	Patterns []string
	// SysRoot is the sysfs mount, default /sys.
	SysRoot string
	// DevRoot is the device directory, default /dev.
	DevRoot string
	// MountInfoPath is the mount table, default /proc/self/mountinfo.
	MountInfoPath string
	// Prober reads signatures; required.
	Prober Prober
	// SkipPartitions leaves out partitions that a glob matched instead of
	// reporting them as problems (for broad globs like /dev/vd*).
	SkipPartitions bool
}

// Static is the static Source.
type Static struct {
	cfg StaticConfig
	fs  sysfs
}

var _ Source = (*Static)(nil)

// NewStatic validates cfg and returns the source.
func NewStatic(cfg StaticConfig) (*Static, error) {
	if len(cfg.Patterns) == 0 {
		return nil, errors.New("static disk source: no device patterns")
	}
	for _, p := range cfg.Patterns {
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
	if cfg.SysRoot == "" {
		cfg.SysRoot = "/sys"
	}
	if cfg.DevRoot == "" {
		cfg.DevRoot = "/dev"
	}
	if cfg.MountInfoPath == "" {
		cfg.MountInfoPath = "/proc/self/mountinfo"
	}
	return &Static{cfg: cfg, fs: sysfs{root: cfg.SysRoot, dev: cfg.DevRoot}}, nil
}

// Discover expands the patterns and describes every whole block device they
// name. Paths that match nothing, are not block devices, are partitions or
// have no stable identity are reported as problems.
func (s *Static) Discover(ctx context.Context) ([]Disk, []error, error) {
	table, err := readMountTable(s.cfg.MountInfoPath)
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", s.cfg.MountInfoPath, err)
	}
	system := s.fs.systemDisks(table)
	var (
		disks    []Disk
		problems []error
		seen     = map[string]bool{}
	)
	for _, pattern := range s.cfg.Patterns {
		matches, _ := filepath.Glob(pattern) // syntax checked in NewStatic
		if len(matches) == 0 {
			problems = append(problems, fmt.Errorf("%s: no such device", pattern))
		}
		for _, path := range matches {
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
			d, err := s.describe(ctx, name, path, table, system)
			if err != nil {
				problems = append(problems, err)
				if d.ID == "" {
					continue
				}
			}
			disks = append(disks, d)
		}
	}
	return disks, problems, nil
}

var errPartition = errors.New("is partition")

// kernelName resolves a device path to the kernel name of a whole disk.
func (s *Static) kernelName(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("%s: not a block device", path)
	}
	name, parent, err := s.fs.nameOf(fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if parent != "" {
		return "", fmt.Errorf("%s: %w %s of %s; the driver uses whole disks only", path, errPartition, name, parent)
	}
	return name, nil
}

// describe reads one disk's identity and facts. A disk whose signatures could
// not be read is returned with a placeholder signature (never blank) and an
// error.
func (s *Static) describe(ctx context.Context, name, path string, t mountTable, system map[string]bool) (Disk, error) {
	kind, value := s.fs.identity(name)
	if kind == "" {
		return Disk{}, fmt.Errorf("%s: no stable identity (no serial, WWN, by-id link or loop backing file)", path)
	}
	bi, err := s.fs.info(name)
	if err != nil {
		return Disk{}, err
	}
	devPath := filepath.Join(s.cfg.DevRoot, name)
	if _, err := os.Stat(devPath); err != nil {
		devPath = path
	}
	d := Disk{
		ID: MakeID(kind, value), Identity: kind + ":" + value, Path: devPath, Name: name,
		SizeBytes: bi.sizeBytes, Media: MediaSSD,
		Facts: Facts{
			System: system[name], Partitioned: len(bi.partitions) > 0, DeviceMapper: bi.dm,
			Holders: append(bi.holders, bi.partHolders...), ReadOnly: bi.readOnly,
			Mounted: t.mounted[bi.majMin],
		},
	}
	if bi.rotational {
		d.Media = MediaHDD
	}
	for _, p := range bi.partitions {
		d.Facts.Mounted = d.Facts.Mounted || t.mounted[p]
	}
	p, err := s.cfg.Prober.Probe(ctx, devPath)
	if err != nil {
		d.Facts.Signatures = []string{"unknown: probe failed"}
		return d, fmt.Errorf("%s: reading signatures: %w", devPath, err)
	}
	d.Facts.Signatures, d.Facts.FSUUID = p.Signatures, p.UUID
	return d, nil
}

// Identify reads the identity of the device now at path, from sysfs only.
func (s *Static) Identify(_ context.Context, path string) (string, string, error) {
	name, err := s.kernelName(path)
	if err != nil {
		return "", "", err
	}
	kind, value := s.fs.identity(name)
	if kind == "" {
		return "", "", fmt.Errorf("%s: no stable identity", path)
	}
	return MakeID(kind, value), kind + ":" + value, nil
}

// String describes the source for logs.
func (s *Static) String() string { return "static:" + strings.Join(s.cfg.Patterns, ",") }
