package driver

import (
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// checkCapabilities validates volume capabilities and returns the filesystem
// type they agree on with the class's fsType ("" when nobody says). A local
// disk is reachable from one node only, so only single-node modes are served.
func checkCapabilities(caps []*csi.VolumeCapability, fsType string) (string, error) {
	for _, c := range caps {
		if c == nil {
			return "", invalid("volume_capabilities: empty capability")
		}
		if err := checkAccessMode(c); err != nil {
			return "", err
		}
		switch at := c.GetAccessType().(type) {
		case *csi.VolumeCapability_Block:
		case *csi.VolumeCapability_Mount:
			fs, err := parseFSType(at.Mount.GetFsType())
			if err != nil {
				return "", err
			}
			if fs != "" && fsType != "" && fs != fsType {
				return "", invalid("volume_capability: fs_type %q conflicts with %q", fs, fsType)
			}
			if fs != "" {
				fsType = fs
			}
			if err := ValidateMountFlags(at.Mount.GetMountFlags()); err != nil {
				return "", err
			}
		default:
			return "", invalid("volume_capability: access_type (block or mount) is required")
		}
	}
	return fsType, nil
}

func checkAccessMode(c *csi.VolumeCapability) error {
	switch m := c.GetAccessMode().GetMode(); m {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
		return nil
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return invalid("volume_capability: access_mode is required")
	default:
		return invalid("volume_capability: access mode %s is not supported: a local disk is reachable from one node only", m)
	}
}

// wantsBlock says whether any capability asks for a raw block device.
func wantsBlock(caps []*csi.VolumeCapability) bool {
	for _, c := range caps {
		if c.GetBlock() != nil {
			return true
		}
	}
	return false
}

func readOnlyMode(c *csi.VolumeCapability) bool {
	return c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}

func wrapInt64(v int64) *wrapperspb.Int64Value { return wrapperspb.Int64(v) }
