package driver

import (
	"errors"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
)

func TestParseParams(t *testing.T) {
	p, err := ParseParams(map[string]string{
		ParamFSType: "xfs", ParamMkfsOptions: "-L data  -K", ParamCleanupPolicy: "zero", ParamMedia: "hdd",
		"csi.storage.k8s.io/pvc/name": "data-0", "csi.storage.k8s.io/pvc/namespace": "default", ParamOnDiskLoss: "recreate",
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.FSType != "xfs" || strings.Join(p.MkfsOptions, "|") != "-L|data|-K" || p.CleanupPolicy != mounter.CleanupZero || p.Media != "hdd" {
		t.Fatalf("got %+v", p)
	}
	s := p.stored()
	if _, ok := s[ParamOnDiskLoss]; ok {
		t.Fatalf("stored form %v keeps %s: the class decides, not the volume", s, ParamOnDiskLoss)
	}
	if _, ok := s["csi.storage.k8s.io/pvc/name"]; ok || s[ctxFSType] != "xfs" || s[ParamMkfsOptions] != "-L data -K" {
		t.Fatalf("stored form %v", s)
	}
	d, err := ParseParams(nil)
	if err != nil || d.CleanupPolicy != mounter.CleanupSignatures || d.FSType != "" || d.Media != "" {
		t.Fatalf("defaults: %+v %v", d, err)
	}
	if a, err := ParseParams(map[string]string{ParamMedia: "any"}); err != nil || a.Media != "" {
		t.Fatalf("media any: %+v %v", a, err)
	}
	b, err := ParseParams(map[string]string{ParamVolumeMode: "Block"})
	if err != nil || b.VolumeMode != "Block" || !b.filter(false).Raw || b.stored()[ParamVolumeMode] != "Block" {
		t.Fatalf("volumeMode Block: %+v %v", b, err)
	}
	if err := b.checkMode([]*csi.VolumeCapability{testutil.MountCap("")}); !errors.Is(err, errInvalid) {
		t.Fatalf("a Block class took a filesystem capability: %v", err)
	}
	fsOnly, _ := ParseParams(map[string]string{ParamVolumeMode: "Filesystem"})
	if err := fsOnly.checkMode([]*csi.VolumeCapability{testutil.BlockCap()}); !errors.Is(err, errInvalid) {
		t.Fatalf("a Filesystem class took a block capability: %v", err)
	}
}

func TestParseParamsRejects(t *testing.T) {
	long := strings.Repeat("x", maxParamValue+1)
	many := map[string]string{}
	for i := 0; i <= maxParams; i++ {
		many["csi.storage.k8s.io/k"+strings.Repeat("x", i)] = "v"
	}
	cases := []struct {
		name   string
		params map[string]string
		field  string
	}{
		{"unknown key", map[string]string{"mkfsOption": "-m 0"}, `"mkfsOption"`},
		{"bad fstype", map[string]string{ParamFSType: "btrfs"}, "btrfs"},
		{"bad policy", map[string]string{ParamCleanupPolicy: "none"}, ParamCleanupPolicy},
		{"bad media", map[string]string{ParamMedia: "nvme"}, ParamMedia},
		{"bad volume mode", map[string]string{ParamVolumeMode: "block"}, ParamVolumeMode},
		{"bad onDiskLoss", map[string]string{ParamOnDiskLoss: "delete"}, ParamOnDiskLoss},
		{"empty onDiskLoss", map[string]string{ParamOnDiskLoss: ""}, ParamOnDiskLoss},
		{"force ext4", map[string]string{ParamMkfsOptions: "-F"}, "-F"},
		{"force combined", map[string]string{ParamMkfsOptions: "-qF"}, "-F"},
		{"uuid ext4", map[string]string{ParamMkfsOptions: "-U 1234"}, "-U"},
		{"device ext4", map[string]string{ParamMkfsOptions: "-m 0 /dev/vdc"}, "/dev/vdc"},
		{"journal device", map[string]string{ParamMkfsOptions: "-J device=/dev/vdc"}, "device="},
		{"missing value", map[string]string{ParamMkfsOptions: "-b"}, "-b"},
		{"long option", map[string]string{ParamMkfsOptions: "--force"}, "--force"},
		{"force xfs", map[string]string{ParamFSType: "xfs", ParamMkfsOptions: "-f"}, "-f"},
		{"xfs log device", map[string]string{ParamFSType: "xfs", ParamMkfsOptions: "-l logdev=/dev/vdc"}, "logdev"},
		{"xfs data file", map[string]string{ParamFSType: "xfs", ParamMkfsOptions: "-d file,name=/tmp/x"}, "file"},
		{"xfs uuid", map[string]string{ParamFSType: "xfs", ParamMkfsOptions: "-m crc=1,uuid=abc"}, "uuid="},
		{"xfs protofile", map[string]string{ParamFSType: "xfs", ParamMkfsOptions: "-p /etc/proto"}, "-p"},
		{"value too long", map[string]string{ParamMkfsOptions: long}, "too long"},
		{"too many", many, "at most"},
		{"panic on errors", map[string]string{ParamMkfsOptions: "-e panic"}, "-e panic"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseParams(c.params)
			if !errors.Is(err, errInvalid) || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("ParseParams(%v) = %v; want invalid naming %q", c.params, err, c.field)
			}
		})
	}
}

func TestValidateMkfsOptionsAccepts(t *testing.T) {
	for fs, args := range map[string][]string{
		"ext4": {"-m", "0", "-E", "stride=4,discard", "-O", "^has_journal", "-Lmydata", "-j", "-b4096", "-I", "256"},
		"xfs":  {"-b", "size=4096", "-m", "crc=1,reflink=1", "-L", "lbl", "-K", "-d", "agcount=4", "-i", "size=512"},
	} {
		if err := ValidateMkfsOptions(fs, args); err != nil {
			t.Errorf("%s %v: %v", fs, args, err)
		}
	}
}

func TestValidateMountFlags(t *testing.T) {
	if err := ValidateMountFlags([]string{"noatime", "nodiscard,commit=30", "data=ordered"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{{"bind"}, {"noatime,remount"}, {"loop"}, {"offset=4096"}, {"a b"}, {"x\n"}, {""}, {"noatime,"}, {"errors=panic"}} {
		if err := ValidateMountFlags(bad); !errors.Is(err, errInvalid) || !strings.Contains(err.Error(), "mount_flags") {
			t.Errorf("%q: %v; want invalid naming mount_flags", bad, err)
		}
	}
}
