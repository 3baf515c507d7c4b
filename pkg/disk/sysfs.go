package disk

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// sysfs reads block-device facts from a sysfs tree (normally /sys) and a
// device tree (normally /dev). Tests point both at fake trees.
type sysfs struct {
	root, dev string
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (s sysfs) block(name string, parts ...string) string {
	return filepath.Join(append([]string{s.root, "block", name}, parts...)...)
}

// nameOf maps a device number "MAJ:MIN" to its kernel name and, for a
// partition, the name of the whole disk it belongs to.
func (s sysfs) nameOf(majMin string) (name, parent string, err error) {
	target, err := filepath.EvalSymlinks(filepath.Join(s.root, "dev", "block", majMin))
	if err != nil {
		return "", "", fmt.Errorf("device %s unknown to sysfs: %w", majMin, err)
	}
	name = filepath.Base(target)
	if _, err := os.Stat(filepath.Join(target, "partition")); err == nil {
		return name, filepath.Base(filepath.Dir(target)), nil
	}
	return name, "", nil
}

// identity returns the most stable identity the kernel offers for a disk:
// serial, then WWN, then a /dev/disk/by-id link, then a loop backing file.
func (s sysfs) identity(name string) (kind, value string) {
	for _, p := range []string{s.block(name, "serial"), s.block(name, "device", "serial")} {
		if v := readTrim(p); v != "" {
			return "serial", v
		}
	}
	for _, p := range []string{s.block(name, "wwid"), s.block(name, "device", "wwid")} {
		if v := readTrim(p); v != "" {
			return "wwn", v
		}
	}
	if link := s.byID(name); link != "" {
		return "byid", link
	}
	if v := readTrim(s.block(name, "loop", "backing_file")); v != "" {
		return "loop", v
	}
	return "", ""
}

// byID finds a /dev/disk/by-id link naming the device, skipping links that
// name a stacked device rather than the disk.
func (s sysfs) byID(name string) string {
	dir := filepath.Join(s.dev, "disk", "by-id")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "dm-") || strings.HasPrefix(n, "lvm-") || strings.Contains(n, "-part") {
			continue
		}
		target, err := os.Readlink(filepath.Join(dir, n))
		if err == nil && filepath.Base(target) == name {
			return n
		}
	}
	return ""
}

// blockInfo is what sysfs says about one whole disk.
type blockInfo struct {
	majMin      string
	sizeBytes   int64
	rotational  bool
	readOnly    bool
	dm          bool
	partitions  []string // MAJ:MIN of each partition
	holders     []string
	partHolders []string
}

func (s sysfs) info(name string) (blockInfo, error) {
	var bi blockInfo
	bi.majMin = readTrim(s.block(name, "dev"))
	if bi.majMin == "" {
		return bi, fmt.Errorf("%s: no such block device in %s", name, s.root)
	}
	sectors, err := strconv.ParseInt(readTrim(s.block(name, "size")), 10, 64)
	if err != nil {
		return bi, fmt.Errorf("%s: reading size: %w", name, err)
	}
	bi.sizeBytes = sectors * 512
	bi.rotational = readTrim(s.block(name, "queue", "rotational")) == "1"
	bi.readOnly = readTrim(s.block(name, "ro")) == "1"
	_, dmErr := os.Stat(s.block(name, "dm"))
	bi.dm = strings.HasPrefix(name, "dm-") || dmErr == nil
	bi.holders = listDir(s.block(name, "holders"))
	entries, _ := os.ReadDir(s.block(name))
	for _, e := range entries {
		if _, err := os.Stat(s.block(name, e.Name(), "partition")); err != nil {
			continue
		}
		bi.partitions = append(bi.partitions, readTrim(s.block(name, e.Name(), "dev")))
		bi.partHolders = append(bi.partHolders, listDir(s.block(name, e.Name(), "holders"))...)
	}
	return bi, nil
}

func listDir(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// mountTable is the set of mounted device numbers and the device numbers of
// the filesystems the system runs from.
type mountTable struct {
	mounted map[string]bool
	system  []string // MAJ:MIN of /, /boot, /boot/efi, /usr
}

var systemMounts = map[string]bool{"/": true, "/boot": true, "/boot/efi": true, "/usr": true}

// readMountTable parses a mountinfo file: field 3 is MAJ:MIN, field 5 the
// mount point.
func readMountTable(path string) (mountTable, error) {
	t := mountTable{mounted: map[string]bool{}}
	f, err := os.Open(path)
	if err != nil {
		return t, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		t.mounted[fields[2]] = true
		if systemMounts[fields[4]] {
			t.system = append(t.system, fields[2])
		}
	}
	return t, sc.Err()
}

// systemDisks names the whole disks behind the system's filesystems,
// following device-mapper and md stacks down through their slaves.
func (s sysfs) systemDisks(t mountTable) map[string]bool {
	out := map[string]bool{}
	var visit func(name string, depth int)
	visit = func(name string, depth int) {
		if depth > 8 || out[name] {
			return
		}
		out[name] = true
		for _, slave := range listDir(filepath.Join(s.root, "class", "block", name, "slaves")) {
			if _, parent, err := s.nameOf(readTrim(filepath.Join(s.root, "class", "block", slave, "dev"))); err == nil && parent != "" {
				visit(parent, depth+1)
			}
			visit(slave, depth+1)
		}
	}
	for _, mm := range t.system {
		name, parent, err := s.nameOf(mm)
		if err != nil {
			continue
		}
		if parent != "" {
			visit(parent, 0)
		}
		visit(name, 0)
	}
	return out
}
