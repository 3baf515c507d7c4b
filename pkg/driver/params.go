package driver

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"unicode"

	"github.com/container-storage-interface/spec/lib/go/csi"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// StorageClass parameter keys.
const (
	ParamFSType        = "csi.storage.k8s.io/fstype"
	ParamMkfsOptions   = "mkfsOptions"
	ParamCleanupPolicy = "cleanupPolicy"
	ParamMedia         = "media"
	ParamDiskCategory  = "diskCategory"
	ParamVolumeMode    = "volumeMode"
	ParamOnDiskLoss    = v1alpha1.ParamOnDiskLoss

	// reservedPrefix marks keys set by Kubernetes sidecars (for example
	// --extra-create-metadata's pvc/name); they are accepted and not stored.
	reservedPrefix = "csi.storage.k8s.io/"
	// The objects a volume is for, from --extra-create-metadata.
	paramPVName       = reservedPrefix + "pv/name"
	paramPVCName      = reservedPrefix + "pvc/name"
	paramPVCNamespace = reservedPrefix + "pvc/namespace"
)

// Volume context keys handed from CreateVolume to NodeStage.
const (
	ctxFSType      = state.ParamFSType
	ctxMkfsOptions = "mkfsOptions"
	ctxDisk        = "disk"
	ctxIdentity    = "diskIdentity"
	ctxMedia       = "media"
	ctxCategory    = "diskCategory"
	ctxCloudDiskID = "ecsDiskId"
	// CtxInstanceID is the ECS instance of the volume's disk: the cluster
	// component asks ECS about it when the volume's node is gone.
	CtxInstanceID = "ecsInstanceId"
)

const (
	maxParams      = 32
	maxParamKey    = 128
	maxParamValue  = 1024
	maxMountFlags  = 64
	maxMountFlagSz = 256
	defaultFSType  = "ext4"
)

// errInvalid marks caller mistakes; the driver answers INVALID_ARGUMENT.
var errInvalid = errors.New("invalid argument")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errInvalid, fmt.Sprintf(format, a...))
}

// Params are the validated StorageClass parameters of a volume.
type Params struct {
	// FSType is "ext4", "xfs", or "" when the class does not say.
	FSType string
	// MkfsOptions are extra mkfs arguments, validated for FSType (or ext4).
	MkfsOptions []string
	// CleanupPolicy applies when the volume is deleted.
	CleanupPolicy mounter.CleanupPolicy
	// Media is "ssd", "hdd" or "" for any.
	Media string
	// DiskCategory is an ECS local disk category, or "" for any.
	DiskCategory string
	// VolumeMode is "Block" or "Filesystem" when the class serves only
	// that mode, "" for both. csi-provisioner asks GetCapacity without
	// capabilities; a Block class makes it count only the disks a raw
	// block volume can have.
	VolumeMode string
}

// ParseParams validates StorageClass parameters. Unknown keys are rejected so
// that a typo in a class fails the claim instead of being silently ignored.
func ParseParams(in map[string]string) (Params, error) {
	p := Params{CleanupPolicy: mounter.CleanupSignatures}
	if len(in) > maxParams {
		return p, invalid("parameters: %d keys, at most %d allowed", len(in), maxParams)
	}
	keys := make([]string, 0, len(in))
	for k := range in {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var err error
	for _, k := range keys {
		v := in[k]
		if len(k) > maxParamKey || len(v) > maxParamValue {
			return p, invalid("parameter %.40q: key or value too long (key at most %d, value at most %d bytes)", k, maxParamKey, maxParamValue)
		}
		if strings.IndexFunc(k, unicode.IsControl) >= 0 || strings.IndexFunc(v, isControlNotSpace) >= 0 {
			return p, invalid("parameter %.40q: key or value contains a NUL or another control character", k)
		}
		switch {
		case k == ParamFSType:
			switch v {
			case "ext4", "xfs", "":
				p.FSType = v
			default:
				return p, invalid("parameter %s: %q is not one of ext4, xfs", k, v)
			}
		case k == ParamMkfsOptions:
			p.MkfsOptions = strings.Fields(v)
		case k == ParamCleanupPolicy:
			switch c := mounter.CleanupPolicy(v); c {
			case mounter.CleanupSignatures, mounter.CleanupDiscard, mounter.CleanupZero, mounter.CleanupShred:
				p.CleanupPolicy = c
			default:
				return p, invalid("parameter %s: %q is not one of signatures, discard, zero, shred", k, v)
			}
		case k == ParamMedia:
			if p.Media, err = choice(k, v, "ssd", "hdd"); err != nil {
				return p, err
			}
		case k == ParamDiskCategory:
			if p.DiskCategory, err = choice(k, v, "local_ssd_pro", "local_hdd_pro"); err != nil {
				return p, err
			}
		case k == ParamVolumeMode:
			if p.VolumeMode, err = choice(k, v, "Block", "Filesystem"); err != nil {
				return p, err
			}
		case k == ParamOnDiskLoss:
			// Read by the cluster component from the class; checked here
			// so that a typo fails the claim.
			if v != v1alpha1.OnDiskLossReport && v != v1alpha1.OnDiskLossRecreate {
				return p, invalid("parameter %s: %q is not one of %s, %s", k, v, v1alpha1.OnDiskLossReport, v1alpha1.OnDiskLossRecreate)
			}
		case strings.HasPrefix(k, reservedPrefix):
			// Set by the provisioner (pvc/name, pv/name, ...): not ours to check.
		default:
			return p, invalid("unknown parameter %q (known: %s, %s, %s, %s, %s, %s, %s)", k, ParamFSType, ParamMkfsOptions, ParamCleanupPolicy, ParamMedia, ParamDiskCategory, ParamVolumeMode, ParamOnDiskLoss)
		}
	}
	fs := p.FSType
	if fs == "" {
		fs = defaultFSType
	}
	if err := ValidateMkfsOptions(fs, p.MkfsOptions); err != nil {
		return p, err
	}
	return p, nil
}

// isControlNotSpace reports control characters other than white space: a
// value may be written over several lines, but never carries a NUL.
func isControlNotSpace(r rune) bool { return unicode.IsControl(r) && !unicode.IsSpace(r) }

// parseFSType checks the fs_type of a volume capability.
func parseFSType(v string) (string, error) {
	switch v {
	case "ext4", "xfs":
		return v, nil
	case "":
		return "", nil
	}
	return "", invalid("volume_capability: fs_type %q is not supported (ext4, xfs)", v)
}

// filter selects the disks the class may use; raw block volumes need disks
// the driver keeps nothing on.
func (p Params) filter(raw bool) inventory.Filter {
	return inventory.Filter{Media: p.Media, Category: p.DiskCategory, Raw: raw || p.VolumeMode == "Block"}
}

// checkMode refuses capabilities of a mode the class does not serve.
func (p Params) checkMode(caps []*csi.VolumeCapability) error {
	for _, c := range caps {
		switch {
		case p.VolumeMode == "Block" && c.GetMount() != nil:
			return invalid("volume_capabilities: the class has %s: Block; it serves raw block volumes only", ParamVolumeMode)
		case p.VolumeMode == "Filesystem" && c.GetBlock() != nil:
			return invalid("volume_capabilities: the class has %s: Filesystem; it serves filesystem volumes only", ParamVolumeMode)
		}
	}
	return nil
}

// stored is the canonical form kept with the volume and compared when a
// CreateVolume is retried.
func (p Params) stored() map[string]string {
	m := map[string]string{ParamCleanupPolicy: string(p.CleanupPolicy)}
	if p.FSType != "" {
		m[ctxFSType] = p.FSType
	}
	if len(p.MkfsOptions) > 0 {
		m[ParamMkfsOptions] = strings.Join(p.MkfsOptions, " ")
	}
	if p.Media != "" {
		m[ParamMedia] = p.Media
	}
	if p.DiskCategory != "" {
		m[ParamDiskCategory] = p.DiskCategory
	}
	if p.VolumeMode != "" {
		m[ParamVolumeMode] = p.VolumeMode
	}
	return m
}

// mkfsSpec describes which options of one mkfs tool are allowed.
type mkfsSpec struct {
	withArg, noArg string
	// badSub lists sub-option prefixes (inside an option's value) that name
	// another device or file, per option letter.
	badSub map[byte][]string
}

var mkfsSpecs = map[string]mkfsSpec{
	// mke2fs: refused are -F (force over existing data), -U (the driver sets
	// the UUID), -S (rewrite superblocks only), -n (dry run), -c/-l (bad-block
	// scans that scale with the disk), -d (copy a host directory), -z (undo
	// file elsewhere), -t (type comes from the class), -V.
	"ext4": {withArg: "bCeEgGiIJLmMNoOrT", noArg: "jqvKD",
		badSub: map[byte][]string{'J': {"device="}}},
	// mkfs.xfs: refused are -f (force), -p (protofile), -c (config file),
	// -N (dry run), -V, and sub-options naming other devices or files.
	"xfs": {withArg: "bdilnmrsL", noArg: "qK",
		badSub: map[byte][]string{
			'd': {"name=", "file"}, 'l': {"logdev=", "name=", "file"},
			'r': {"rtdev=", "name=", "file"}, 'm': {"uuid="},
		}},
}

// mkfsSafeChars are the only bytes an mkfs argument may hold: enough for
// numbers, sizes, labels, feature lists ("^has_journal") and sub-options
// ("stride=8,discard"), and nothing a POSIX shell would treat as quoting,
// expansion, globbing, redirection, a comment or a command separator.
const mkfsSafeChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._,=:^/+-"

// ValidateMkfsOptions checks extra mkfs arguments for fsType. Every argument
// must be a known option made of mkfsSafeChars, an option that takes a value
// must be the first letter of its argument ("-L data", "-Ldata", "-jL" is
// refused), and nothing may name a device or force a format.
func ValidateMkfsOptions(fsType string, args []string) error {
	spec, ok := mkfsSpecs[fsType]
	if !ok {
		return invalid("filesystem type %q is not supported (ext4, xfs)", fsType)
	}
	for _, a := range args {
		if i := strings.IndexFunc(a, func(r rune) bool { return !strings.ContainsRune(mkfsSafeChars, r) }); i >= 0 {
			return invalid("%s: argument %.64q holds %q; only letters, digits and . _ , = : ^ / + - are allowed", ParamMkfsOptions, a, []rune(a[i:])[0])
		}
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) < 2 || a[0] != '-' || a[1] == '-' {
			return invalid("%s: argument %q is not an option; mkfsOptions may not name a device or pass positional arguments", ParamMkfsOptions, a)
		}
		for j := 1; j < len(a); j++ {
			c := a[j]
			switch {
			case strings.IndexByte(spec.noArg, c) >= 0:
				continue
			case strings.IndexByte(spec.withArg, c) >= 0:
				if j > 1 {
					// mkfs's argv is built by looking at the first letter
					// of each argument only; a value-taking option later
					// in a cluster would be read differently there.
					return invalid("%s: option -%c in %q takes a value and must start its own argument (write -%c <value>)", ParamMkfsOptions, c, a, c)
				}
				val := a[j+1:]
				if val == "" {
					if i+1 >= len(args) {
						return invalid("%s: option -%c needs a value", ParamMkfsOptions, c)
					}
					i++
					val = args[i]
				}
				if fsType == "ext4" && c == 'e' && val == "panic" {
					return invalid("%s: -e panic would crash the whole node on a filesystem error of one volume; use -e remount-ro", ParamMkfsOptions)
				}
				for _, sub := range strings.Split(val, ",") {
					for _, bad := range spec.badSub[c] {
						if strings.HasPrefix(sub, bad) {
							return invalid("%s: -%c %s would point mkfs at another device or file", ParamMkfsOptions, c, sub)
						}
					}
				}
				j = len(a)
			default:
				return invalid("%s: option -%c is not allowed for %s (it could format over data, name another device, or defeat the driver's defaults)", ParamMkfsOptions, c, fsType)
			}
		}
	}
	return nil
}

// forbiddenMountFlags change what is mounted rather than how.
var forbiddenMountFlags = map[string]bool{
	"bind": true, "rbind": true, "remount": true, "move": true, "loop": true,
	"make-shared": true, "make-private": true, "make-slave": true, "make-unbindable": true,
	"make-rshared": true, "make-rprivate": true, "make-rslave": true, "make-runbindable": true,
}

// ValidateMountFlags checks the mount options of a volume capability.
func ValidateMountFlags(flags []string) error {
	if len(flags) > maxMountFlags {
		return invalid("mount_flags: %d options, at most %d allowed", len(flags), maxMountFlags)
	}
	for _, f := range flags {
		if len(f) > maxMountFlagSz {
			return invalid("mount_flags: option %.40q... longer than %d bytes", f, maxMountFlagSz)
		}
		for _, o := range strings.Split(f, ",") {
			name, _, _ := strings.Cut(o, "=")
			switch {
			case o == "":
				return invalid("mount_flags: empty option in %q", f)
			case strings.IndexFunc(o, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
				return invalid("mount_flags: option %q contains white space or control characters", o)
			case forbiddenMountFlags[name] || name == "offset" || name == "sizelimit":
				return invalid("mount_flags: option %q is not allowed (it changes what is mounted)", o)
			case o == "errors=panic":
				return invalid("mount_flags: errors=panic would crash the whole node on a filesystem error of one volume; use errors=remount-ro")
			}
		}
	}
	return nil
}

// choice is the value of parameter k when it is one of values, "" for any
// or an empty value (no filter), and INVALID_ARGUMENT otherwise.
func choice(k, v string, values ...string) (string, error) {
	if v == "any" || v == "" {
		return "", nil
	}
	if slices.Contains(values, v) {
		return v, nil
	}
	return "", invalid("parameter %s: %q is not one of %s, any", k, v, strings.Join(values, ", "))
}
