package driver

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
)

// The fuzz targets below check the validators against a model of the tools
// written from the tools' own sources, not from the validators' tables.

// mkfsGetopt are the getopt strings of mke2fs (e2fsprogs misc/mke2fs.c) and
// mkfs.xfs (xfsprogs mkfs/xfs_mkfs.c): a letter followed by ':' takes a value.
var mkfsGetopt = map[string]string{
	"ext4": "b:cd:e:g:i:jl:m:no:qr:s:t:vC:DE:FG:I:J:KL:M:N:O:R:ST:U:Vz:",
	"xfs":  "b:c:d:i:l:L:m:n:KNp:qr:s:CfV",
}

// mkfsDangerous are the options a StorageClass must never reach mkfs with:
// force (-F, -f), the UUID the driver sets (-U), superblock-only or dry runs
// (-S, -n, -N, -V), bad-block scans and lists read from the host (-c, -l),
// host directories, undo files, protofiles and config files (-d, -z, -p,
// -c), the type (-t), the obsolete alias of -E (-R), and mkfs.xfs -C.
var mkfsDangerous = map[string]string{
	"ext4": "FUSncldztVR",
	"xfs":  "fNVpcC",
}

// mkfsDeviceSubopts are the sub-options that name another device or a file,
// per option letter, and whether they do so only with a value ("key=").
var mkfsDeviceSubopts = map[string]map[byte][]string{
	"ext4": {'J': {"device="}},
	"xfs": {
		'd': {"name=", "file"}, 'l': {"logdev=", "name=", "file"},
		'r': {"rtdev=", "name=", "file"}, 'm': {"uuid="},
	},
}

// getoptOpt is one option as getopt(3) hands it to mkfs.
type getoptOpt struct {
	letter  byte
	value   string
	known   bool // in the getopt string
	missing bool // takes a value, and none was left
}

// getopt parses args as GNU getopt(3) does with optstring, permuting: it
// returns the options and the arguments mkfs would take as positional (the
// device, the size).
func getopt(optstring string, args []string) (opts []getoptOpt, positional []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return opts, append(positional, args[i+1:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		for j := 1; j < len(a); j++ {
			c := a[j]
			k := strings.IndexByte(optstring, c)
			if c == ':' || k < 0 {
				opts = append(opts, getoptOpt{letter: c})
				continue
			}
			o := getoptOpt{letter: c, known: true}
			if k+1 < len(optstring) && optstring[k+1] == ':' {
				switch {
				case j+1 < len(a):
					o.value = a[j+1:]
				case i+1 < len(args):
					i++
					o.value = args[i]
				default:
					o.missing = true
				}
				j = len(a)
			}
			opts = append(opts, o)
		}
	}
	return opts, positional
}

// takesValue says whether option letter c takes a value in optstring.
func takesValue(optstring string, c byte) bool {
	k := strings.IndexByte(optstring, c)
	return c != ':' && k >= 0 && k+1 < len(optstring) && optstring[k+1] == ':'
}

// getoptValues lists, as "index:value" pairs, the values getopt(3) gives to
// options of args.
func getoptValues(optstring string, args []string) string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			continue
		}
		for j := 1; j < len(a); j++ {
			if takesValue(optstring, a[j]) {
				if j+1 < len(a) {
					out = append(out, fmt.Sprintf("%d:%s", i, a[j+1:]))
				} else if i+1 < len(args) {
					i++
					out = append(out, fmt.Sprintf("%d:%s", i, args[i]))
				}
				break
			}
		}
	}
	return strings.Join(out, " ")
}

// firstLetterValues lists the option values as pkg/mounter's argv builder
// reads them before it merges the driver's own -E (ext4) or -m (xfs) into
// the user's: an argument is an option with a value only when its first
// letter takes one.
func firstLetterValues(optstring string, args []string) string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) < 2 || a[0] != '-' || !takesValue(optstring, a[1]) {
			continue
		}
		if len(a) > 2 {
			out = append(out, fmt.Sprintf("%d:%s", i, a[2:]))
		} else if i+1 < len(args) {
			i++
			out = append(out, fmt.Sprintf("%d:%s", i, args[i]))
		}
	}
	return strings.Join(out, " ")
}

// checkAcceptedMkfs fails t unless args hold nothing a shell would
// interpret, the driver's argv builder and mkfs agree on which arguments are
// option values (else merging the driver's defaults into a value could turn
// an option into a positional argument), and, as mkfs parses them, they add
// no positional argument (a second device), no unknown or dangerous option,
// no option without its value and no sub-option naming a device or file.
func checkAcceptedMkfs(t *testing.T, fsType string, args []string) {
	t.Helper()
	for _, a := range args {
		for _, r := range a {
			if !(r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)) || strings.ContainsRune("._,=:^/+-", r)) {
				t.Fatalf("accepted %s mkfs argument %q holds %q", fsType, a, r)
			}
		}
	}
	if got, want := firstLetterValues(mkfsGetopt[fsType], args), getoptValues(mkfsGetopt[fsType], args); got != want {
		t.Fatalf("accepted %s mkfs options %q: read by first letter, the values are %q; mkfs reads %q", fsType, args, got, want)
	}
	opts, positional := getopt(mkfsGetopt[fsType], args)
	if len(positional) > 0 {
		t.Fatalf("accepted %s mkfs options %q add positional arguments %q", fsType, args, positional)
	}
	for _, o := range opts {
		switch {
		case !o.known:
			t.Fatalf("accepted %s mkfs options %q hold unknown option -%c", fsType, args, o.letter)
		case strings.IndexByte(mkfsDangerous[fsType], o.letter) >= 0:
			t.Fatalf("accepted %s mkfs options %q hold forbidden option -%c", fsType, args, o.letter)
		case o.missing:
			t.Fatalf("accepted %s mkfs options %q end with -%c without its value", fsType, args, o.letter)
		}
		for _, sub := range strings.Split(o.value, ",") {
			for _, bad := range mkfsDeviceSubopts[fsType][o.letter] {
				key, _, hasValue := strings.Cut(sub, "=")
				if key == strings.TrimSuffix(bad, "=") && (hasValue || !strings.HasSuffix(bad, "=")) {
					t.Fatalf("accepted %s mkfs options %q: -%c %s names another device or file", fsType, args, o.letter, sub)
				}
			}
		}
	}
}

// paramSeeds are (fstype, mkfsOptions, cleanupPolicy, media, diskCategory,
// extra key, extra value) tuples from the README, the examples and the
// existing tests, good and bad.
var paramSeeds = [][7]string{
	{"", "-m 0", "", "ssd", "", "csi.storage.k8s.io/pvc/name", "data-0"},
	{"", "", "", "", "", "onDiskLoss", "recreate"},
	{"", "", "", "", "", "onDiskLoss", "delete"},
	{"ext4", "-m 0 -E stride=8", "zero", "any", "local_ssd_pro", "", ""},
	{"xfs", "-L data -i size=512", "signatures", "hdd", "local_hdd_pro", "csi.storage.k8s.io/pv/name", "pv-1"},
	{"xfs", "-K -L data", "discard", "", "any", "", ""},
	{"ext4", "-O ^has_journal,^metadata_csum -j -b4096 -I 256 -Lmydata", "shred", "", "", "", ""},
	{"xfs", "-b size=4096 -m crc=1,reflink=1 -d agcount=4", "", "", "", "", ""},
	{"ext4", "-F", "", "", "", "", ""},
	{"ext4", "-qF", "", "", "", "", ""},
	{"ext4", "-m 0 /dev/vdc", "", "", "", "", ""},
	{"ext4", "-J device=/dev/vdc", "", "", "", "", ""},
	{"ext4", "-J size=64,device=LABEL=x", "", "", "", "", ""},
	{"ext4", "-L -F", "", "", "", "", ""},
	{"ext4", "-b", "", "", "", "", ""},
	{"ext4", "--force", "", "", "", "", ""},
	{"ext4", "-- /dev/vdc", "", "", "", "", ""},
	{"ext4", "-L $(reboot)", "", "", "", "", ""},
	{"ext4", "-L a;b", "", "", "", "", ""},
	{"ext4", "-L `id`", "", "", "", "", ""},
	{"ext4", "-L a\x00b", "", "", "", "", ""},
	{"ext4", "-jE stride=8", "", "", "", "", ""},
	{"ext4", "-qL -E -Lfoo", "", "", "", "", ""},
	{"xfs", "-qL -m -Lx", "", "", "", "", ""},
	{"xfs", "-Kq -L x", "", "", "", "", ""},
	{"ext4", "-E offset=4096\n-L x", "", "", "", "", ""},
	{"xfs", "-f", "", "", "", "", ""},
	{"xfs", "-l logdev=/dev/vdc", "", "", "", "", ""},
	{"xfs", "-d file,name=/tmp/x", "", "", "", "", ""},
	{"xfs", "-m crc=1,uuid=abc", "", "", "", "", ""},
	{"xfs", "-r rtdev=/dev/vdd", "", "", "", "", ""},
	{"xfs", "-p /etc/proto", "", "", "", "", ""},
	{"btrfs", "", "", "", "", "", ""},
	{"ext4\x00", "", "none", "nvme", "cloud_essd", "mediaa", "ssd"},
	{"", "", "", "ssd\x00", "", "csi.storage.k8s.io/pvc/name", "a\x00b"},
	{"", "", "", "", "", "media\x00", "ssd"},
	{"", "", "", "", "", strings.Repeat("k", maxParamKey+1), "v"},
	{"", strings.Repeat("-m 0 ", 300), "", "", "", "", ""},
}

// paramMask bits select which of the fuzzed keys are present.
const (
	hasFSType = 1 << iota
	hasMkfs
	hasCleanup
	hasMedia
	hasCategory
	hasExtra
)

// FuzzParseParams: ParseParams never panics; a rejection is errInvalid whose
// message names a parameter that is refused on its own; what it accepts has
// known values only, and mkfs options that reach mkfs as nothing but
// allowed options.
func FuzzParseParams(f *testing.F) {
	for _, s := range paramSeeds {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5], s[6], uint8(0xff))
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5], s[6], uint8(hasFSType|hasMkfs))
	}
	f.Fuzz(func(t *testing.T, fsType, mkfs, cleanup, media, category, extraKey, extraValue string, mask uint8) {
		in := map[string]string{}
		for i, kv := range [][2]string{ // in order: a later extra key overrides a known one
			{ParamFSType, fsType}, {ParamMkfsOptions, mkfs}, {ParamCleanupPolicy, cleanup},
			{ParamMedia, media}, {ParamDiskCategory, category}, {extraKey, extraValue},
		} {
			if mask&(1<<i) != 0 {
				in[kv[0]] = kv[1]
			}
		}
		p, err := ParseParams(in)
		if err != nil {
			checkRejection(t, in, err)
			return
		}
		checkAccepted(t, in, p)
	})
}

// checkRejection: err is errInvalid and names a key of in that ParseParams
// refuses alone (mkfsOptions together with the class's fstype, which decides
// what the options mean).
func checkRejection(t *testing.T, in map[string]string, err error) {
	t.Helper()
	if !errors.Is(err, errInvalid) {
		t.Fatalf("ParseParams(%q) = %v; want errInvalid", in, err)
	}
	msg := err.Error()
	var culprits []string
	for k, v := range in {
		alone := map[string]string{k: v}
		if fs, ok := in[ParamFSType]; ok && k == ParamMkfsOptions {
			alone[ParamFSType] = fs
		}
		if _, err := ParseParams(alone); err != nil {
			culprits = append(culprits, k)
			if namesKey(msg, k) {
				return
			}
		}
	}
	if len(in) > maxParams && strings.Contains(msg, "parameters") {
		return
	}
	t.Fatalf("ParseParams(%q) = %q: names none of the parameters refused alone, %q", in, msg, culprits)
}

// namesKey says whether msg names the parameter k: as it is, quoted, or
// quoted and cut to 40 characters.
func namesKey(msg, k string) bool {
	if k == "" {
		return strings.Contains(msg, `""`)
	}
	return strings.Contains(msg, k) || strings.Contains(msg, strconv.Quote(k)) || strings.Contains(msg, fmt.Sprintf("%.40q", k))
}

// checkAccepted: every value is one the driver knows, and the mkfs options
// NodeStage will pass (the stored form, split again) are the validated ones
// and safe for the filesystem they will create.
func checkAccepted(t *testing.T, in map[string]string, p Params) {
	t.Helper()
	for k, v := range in {
		if strings.IndexFunc(k, unicode.IsControl) >= 0 || strings.ContainsRune(v, 0) {
			t.Fatalf("ParseParams accepted a NUL or control character in %q=%q", k, v)
		}
	}
	switch {
	case p.FSType != "" && p.FSType != "ext4" && p.FSType != "xfs":
		t.Fatalf("accepted fstype %q", p.FSType)
	case p.Media != "" && p.Media != "ssd" && p.Media != "hdd":
		t.Fatalf("accepted media %q", p.Media)
	case p.DiskCategory != "" && p.DiskCategory != "local_ssd_pro" && p.DiskCategory != "local_hdd_pro":
		t.Fatalf("accepted diskCategory %q", p.DiskCategory)
	}
	switch p.CleanupPolicy {
	case mounter.CleanupSignatures, mounter.CleanupDiscard, mounter.CleanupZero, mounter.CleanupShred:
	default:
		t.Fatalf("accepted cleanupPolicy %q", p.CleanupPolicy)
	}
	staged := strings.Fields(p.stored()[ParamMkfsOptions])
	if strings.Join(staged, "\x00") != strings.Join(p.MkfsOptions, "\x00") {
		t.Fatalf("stored mkfs options split to %q, validated %q", staged, p.MkfsOptions)
	}
	checkAcceptedMkfs(t, orDefault(p.FSType), staged)
}

// FuzzValidateMkfsOptions: for each filesystem, ValidateMkfsOptions never
// panics, names mkfsOptions in every rejection, and accepts only options that
// mkfs parses as allowed options (checkAcceptedMkfs). The arguments are split
// at '\x1f' so that they may hold white space, as a caller other than
// ParseParams could pass.
func FuzzValidateMkfsOptions(f *testing.F) {
	for _, s := range paramSeeds {
		f.Add(s[1], false)
		f.Add(s[1], true)
	}
	f.Add("-L\x1fa b", false)
	f.Add("-L\x1f", true)
	f.Add("-q\x1f\x1f-K", true)
	f.Fuzz(func(t *testing.T, joined string, xfs bool) {
		fsType := "ext4"
		if xfs {
			fsType = "xfs"
		}
		var args []string
		if joined != "" {
			args = strings.Split(joined, "\x1f")
		}
		if err := ValidateMkfsOptions(fsType, args); err != nil {
			if !errors.Is(err, errInvalid) || !strings.Contains(err.Error(), ParamMkfsOptions) {
				t.Fatalf("ValidateMkfsOptions(%s, %q) = %v; want errInvalid naming %s", fsType, args, err, ParamMkfsOptions)
			}
			return
		}
		checkAcceptedMkfs(t, fsType, args)
	})
}

// forbiddenMountOptions change what is mounted rather than how (mount(8)).
var forbiddenMountOptions = []string{"bind", "rbind", "remount", "move", "loop", "offset", "sizelimit",
	"make-shared", "make-private", "make-slave", "make-unbindable",
	"make-rshared", "make-rprivate", "make-rslave", "make-runbindable"}

// FuzzCheckCapabilities: a volume capability with any fs_type, two mount
// flags (each may hold several comma-separated options) and any access mode
// is never a panic; a rejection is errInvalid naming the capability field at
// fault; an accepted one has a supported fs_type and mount options that
// mount(8) receives as plain, non-empty options that do not change what is
// mounted.
func FuzzCheckCapabilities(f *testing.F) {
	for _, s := range [][3]string{
		{"", "noatime", "nodiscard,commit=30"}, {"ext4", "data=ordered", "errors=continue"}, {"xfs", "", ""},
		{"btrfs", "", ""}, {"ext4\x00", "", ""}, {"", "bind", ""}, {"", "noatime,remount", ""}, {"", "loop", "offset=4096"},
		{"", "a b", ""}, {"", "x\n", ""}, {"", "noatime,", ""}, {"", "ro,,rw", ""}, {"", "bind=1", ""}, {"", "\x00", ""}, {"ext4", "sync", ","},
	} {
		f.Add(s[0], s[1], s[2], false, int32(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER))
	}
	f.Add("", "", "", true, int32(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY))
	f.Add("ext4", "", "", false, int32(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER))
	f.Add("ext4", "", "", false, int32(csi.VolumeCapability_AccessMode_UNKNOWN))
	f.Add("ext4", "", "", false, int32(99))
	f.Fuzz(func(t *testing.T, fsType, flag1, flag2 string, block bool, mode int32) {
		var flags []string
		for _, fl := range []string{flag1, flag2} {
			if fl != "" {
				flags = append(flags, fl)
			}
		}
		vc := testutil.MountCap(fsType, flags...)
		if block {
			vc = testutil.BlockCap()
		}
		vc.AccessMode.Mode = csi.VolumeCapability_AccessMode_Mode(mode)
		got, err := checkCapabilities([]*csi.VolumeCapability{vc}, "")
		if err != nil {
			msg := err.Error()
			if !errors.Is(err, errInvalid) || !(strings.Contains(msg, "volume_capability") || strings.Contains(msg, "mount_flags")) {
				t.Fatalf("checkCapabilities(%v) = %v; want errInvalid naming volume_capability or mount_flags", vc, err)
			}
			return
		}
		if block {
			if got != "" {
				t.Fatalf("block capability gave fs_type %q", got)
			}
			return
		}
		if got != fsType || (got != "" && got != "ext4" && got != "xfs") {
			t.Fatalf("fs_type %q accepted as %q", fsType, got)
		}
		for _, fl := range flags {
			for _, o := range strings.Split(fl, ",") {
				name, _, _ := strings.Cut(o, "=")
				if o == "" || strings.IndexFunc(o, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
					t.Fatalf("accepted mount option %q (in %q)", o, fl)
				}
				for _, bad := range forbiddenMountOptions {
					if name == bad {
						t.Fatalf("accepted mount option %q, which changes what is mounted", o)
					}
				}
			}
		}
	})
}
