package mounter

import (
	"fmt"
	"strings"
)

// Ext4Defaults are the extended options the driver always gives mkfs.ext4:
// no discard of the whole device, lazy inode table and journal
// initialisation. Together they keep the time of mkfs.ext4 nearly
// independent of the device size.
const Ext4Defaults = "nodiscard,lazy_itable_init=1,lazy_journal_init=1"

// valueFlags are the options of each mkfs that take a value, from their
// getopt strings (mke2fs: "b:cd:e:g:i:jl:m:no:qr:s:t:vC:DE:FG:I:J:KL:M:N:O:R:ST:U:Vz:",
// mkfs.xfs: "b:c:d:i:l:L:m:n:KNp:qr:s:CfV"), so that a value such as a
// label "-E" is never taken for an option.
var valueFlags = map[string]string{
	"ext4": "bdegilmorstCEGIJLMNORTUz",
	"xfs":  "bcdilLmnprs",
}

// mkfsArgs builds the arguments of mkfs.<fsType> that come before the
// device:
//
//	ext4: -q -U <uuid> -E <Ext4Defaults> <extra...>
//	xfs:  -q -K -m uuid=<uuid> <extra...> [-d size=<sizeBytes rounded down to 4 KiB>]
//
// When extra carries the same option (-E for ext4, -m for xfs; as "-E", "v"
// or as "-Ev"; other options are kept exactly as given), the driver's separate option is dropped and the user's is
// replaced in place by the defaults followed by the user's value, so that the
// user's keys come later and win. mke2fs keeps only the last -E it is given,
// so every user -E is folded into that one option, in order; mkfs.xfs adds
// repeated -m options up, so the UUID joins the first one only. For xfs a
// sizeBytes > 0 is added to the last -d option, or as a new one (ext4 takes
// the size after the device, see Format). An option without its value fails
// with ErrInvalidMkfsArgs, an fsType other than ext4 or xfs with
// ErrUnsupportedFS.
func mkfsArgs(fsType, uuid string, sizeBytes int64, extra []string) ([]string, error) {
	var flag, defaults string
	var args []string
	switch fsType {
	case "ext4":
		flag, defaults = "-E", Ext4Defaults
		args = []string{"-q", "-U", uuid}
	case "xfs":
		flag, defaults = "-m", "uuid="+uuid
		args = []string{"-q", "-K"}
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedFS, fsType)
	}
	var rest []string
	merged, lastD := -1, -1 // indexes in rest of the merged value and of the last -d value
	var values []string
	for i := 0; i < len(extra); i++ {
		a := extra[i]
		if len(a) < 2 || a[0] != '-' || !strings.ContainsRune(valueFlags[fsType], rune(a[1])) {
			rest = append(rest, a)
			continue
		}
		f, v := a[:2], a[2:]
		tokens := []string{a}
		if v == "" {
			if i+1 >= len(extra) {
				return nil, fmt.Errorf("%w: %s without a value", ErrInvalidMkfsArgs, f)
			}
			i++
			v = extra[i]
			tokens = append(tokens, v)
		}
		switch {
		case f == flag && merged < 0:
			rest = append(rest, flag, "")
			merged = len(rest) - 1
			values = append(values, v)
		case f == flag && fsType == "ext4":
			values = append(values, v)
		default: // kept as given
			rest = append(rest, tokens...)
			if f == "-d" {
				lastD = len(rest) - 1
			}
		}
	}
	if merged < 0 {
		args = append(args, flag, defaults)
	} else {
		m := defaults
		for _, v := range values {
			if v != "" {
				m += "," + v
			}
		}
		rest[merged] = m
	}
	if fsType == "xfs" && sizeBytes > 0 {
		size := fmt.Sprintf("size=%d", sizeBytes/4096*4096)
		if lastD >= 0 {
			rest[lastD] += "," + size
		} else {
			rest = append(rest, "-d", size)
		}
	}
	return append(args, rest...), nil
}

// mkfsArgv is the whole command line of Format's mkfs after the program
// name: mkfsArgs, the device, and for ext4 with sizeBytes > 0 the filesystem
// size in KiB (mke2fs's fs-size argument, after the device).
func mkfsArgv(fsType, uuid, device string, sizeBytes int64, extra []string) ([]string, error) {
	args, err := mkfsArgs(fsType, uuid, sizeBytes, extra)
	if err != nil {
		return nil, err
	}
	args = append(args, device)
	if fsType == "ext4" && sizeBytes > 0 {
		args = append(args, fmt.Sprintf("%dk", sizeBytes/1024))
	}
	return args, nil
}
