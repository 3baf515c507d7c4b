package mounter

import (
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// Use is one mount that uses a block device: a filesystem mounted from it, or
// its device node bind-mounted somewhere (a published raw block volume).
type Use struct {
	mount.MountInfo
	// DeviceNode is set for a bind mount of the device node.
	DeviceNode bool
}

// Uses lists every mount that uses device. Device-node binds are found on
// devtmpfs and tmpfs mounts only, so no other filesystem is ever stat'ed.
func Uses(m Interface, device string) ([]Use, error) {
	want, err := m.DeviceNumber(device)
	if err != nil {
		return nil, err
	}
	infos, err := m.MountInfo()
	if err != nil {
		return nil, err
	}
	var out []Use
	for _, mi := range infos {
		switch {
		case uint32(mi.Major) == unix.Major(want) && uint32(mi.Minor) == unix.Minor(want):
			out = append(out, Use{MountInfo: mi})
		case mi.FsType == "devtmpfs" || mi.FsType == "tmpfs":
			if n, err := m.DeviceNumber(mi.MountPoint); err == nil && n == want {
				out = append(out, Use{MountInfo: mi, DeviceNode: true})
			}
		}
	}
	return out, nil
}
