package disk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTree builds a sysfs and /dev tree with: vda (system disk, partition
// vda1 mounted at /), vdb (virtio serial, ssd), nvme0n1 (NVMe controller
// serial), sda (WWN, rotational, read-only), vdc (partitioned, partition
// held by dm-0), dm-0, and vdd (identity from a by-id link only).
func fakeTree(t *testing.T) (sys, dev, mountinfo string) {
	t.Helper()
	root := t.TempDir()
	sys, dev = filepath.Join(root, "sys"), filepath.Join(root, "dev")
	write := func(p, v string) {
		p = filepath.Join(sys, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	disk := func(name, majMin, sectors, rot string) {
		dir := filepath.Join(sys, "devices/virtual/block", name)
		write("devices/virtual/block/"+name+"/dev", majMin)
		write("devices/virtual/block/"+name+"/size", sectors)
		write("devices/virtual/block/"+name+"/queue/rotational", rot)
		write("devices/virtual/block/"+name+"/ro", "0")
		os.MkdirAll(filepath.Join(sys, "block"), 0o755)
		os.MkdirAll(filepath.Join(sys, "dev/block"), 0o755)
		os.MkdirAll(filepath.Join(sys, "class/block"), 0o755)
		os.Symlink(dir, filepath.Join(sys, "block", name))
		os.Symlink(dir, filepath.Join(sys, "class/block", name))
		os.Symlink(dir, filepath.Join(sys, "dev/block", majMin))
	}
	part := func(parent, name, majMin string) {
		dir := filepath.Join(sys, "devices/virtual/block", parent, name)
		write("devices/virtual/block/"+parent+"/"+name+"/dev", majMin)
		write("devices/virtual/block/"+parent+"/"+name+"/partition", "1")
		os.Symlink(dir, filepath.Join(sys, "dev/block", majMin))
		os.Symlink(dir, filepath.Join(sys, "class/block", name))
	}
	disk("vda", "254:0", "83886080", "1")
	part("vda", "vda1", "254:1")
	disk("vdb", "254:16", "2097152", "0")
	write("devices/virtual/block/vdb/serial", "bp1abcdef")
	disk("nvme0n1", "259:0", "4194304", "0")
	write("devices/virtual/block/nvme0n1/device/serial", "  bp1nvme01  ")
	disk("sda", "8:0", "1024", "1")
	write("devices/virtual/block/sda/device/wwid", "naa.5000c500a1b2c3d4")
	write("devices/virtual/block/sda/ro", "1")
	disk("vdc", "254:32", "2048", "0")
	write("devices/virtual/block/vdc/serial", "bp1parted")
	part("vdc", "vdc1", "254:33")
	os.MkdirAll(filepath.Join(sys, "devices/virtual/block/vdc/vdc1/holders/dm-0"), 0o755)
	disk("dm-0", "253:0", "2048", "0")
	write("devices/virtual/block/dm-0/dm/name", "vg-lv")
	disk("vdd", "254:48", "2048", "0")
	os.MkdirAll(filepath.Join(dev, "disk/by-id"), 0o755)
	os.Symlink("../../vdd", filepath.Join(dev, "disk/by-id", "virtio-legacy-vdd"))
	os.Symlink("../../dm-0", filepath.Join(dev, "disk/by-id", "dm-name-vg-lv"))
	mountinfo = filepath.Join(root, "mountinfo")
	os.WriteFile(mountinfo, []byte(strings.Join([]string{
		"22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw",
		"40 22 254:33 / /data rw - xfs /dev/vdc1 rw",
		"41 22 0:21 / /proc rw - proc proc rw",
	}, "\n")+"\n"), 0o644)
	return sys, dev, mountinfo
}

func TestSysfsIdentity(t *testing.T) {
	sys, dev, _ := fakeTree(t)
	fs := sysfs{root: sys, dev: dev}
	for name, want := range map[string]string{
		"vdb": "serial:bp1abcdef", "nvme0n1": "serial:bp1nvme01", "sda": "wwn:naa.5000c500a1b2c3d4",
		"vdd": "byid:virtio-legacy-vdd", "vda": "",
	} {
		kind, value := fs.identity(name)
		got := ""
		if kind != "" {
			got = kind + ":" + value
		}
		if got != want {
			t.Errorf("identity(%s) = %q, want %q", name, got, want)
		}
	}
	if id := MakeID("serial", "bp1abcdef"); id != "serial-bp1abcdef" {
		t.Errorf("MakeID = %s", id)
	}
	if id := MakeID("wwn", "naa.5000:c5/00"); !strings.HasPrefix(id, "wwn-h") || len(id) > 48 {
		t.Errorf("MakeID of unsafe value = %s", id)
	}
}

func TestSysfsInfoAndFacts(t *testing.T) {
	sys, dev, mi := fakeTree(t)
	fs := sysfs{root: sys, dev: dev}
	vdb, err := fs.info("vdb")
	if err != nil || vdb.sizeBytes != 1<<30 || vdb.rotational || vdb.readOnly || vdb.dm || len(vdb.partitions) != 0 {
		t.Fatalf("vdb: %+v %v", vdb, err)
	}
	sda, _ := fs.info("sda")
	if !sda.rotational || !sda.readOnly {
		t.Fatalf("sda: %+v", sda)
	}
	vdc, _ := fs.info("vdc")
	if len(vdc.partitions) != 1 || vdc.partitions[0] != "254:33" || len(vdc.partHolders) != 1 || vdc.partHolders[0] != "dm-0" {
		t.Fatalf("vdc: %+v", vdc)
	}
	dm, _ := fs.info("dm-0")
	if !dm.dm {
		t.Fatalf("dm-0: %+v", dm)
	}
	if _, err := fs.info("nope"); err == nil {
		t.Fatal("info of a missing device succeeded")
	}
	table, err := readMountTable(mi)
	if err != nil || !table.mounted["254:33"] || table.mounted["254:16"] {
		t.Fatalf("mount table %+v %v", table, err)
	}
	sysDisks := fs.systemDisks(table)
	if !sysDisks["vda"] || sysDisks["vdb"] || sysDisks["vdc"] {
		t.Fatalf("system disks %v", sysDisks)
	}
	name, parent, err := fs.nameOf("254:33")
	if err != nil || name != "vdc1" || parent != "vdc" {
		t.Fatalf("nameOf partition: %s %s %v", name, parent, err)
	}
}
