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
	t, err := ReadMountTable(m)
	if err != nil {
		return nil, err
	}
	return t.uses(want), nil
}

// MountTable is one reading of the mount table, to find the uses of many
// devices at the cost of one: every device-node bind is stat'ed once.
type MountTable struct {
	infos []mount.MountInfo
	nodes map[uint64][]mount.MountInfo // device-node binds by device number
}

// ReadMountTable reads the mount table of m.
func ReadMountTable(m Interface) (*MountTable, error) {
	infos, err := m.MountInfo()
	if err != nil {
		return nil, err
	}
	t := &MountTable{infos: infos, nodes: map[uint64][]mount.MountInfo{}}
	for _, mi := range infos {
		if mi.FsType == "devtmpfs" || mi.FsType == "tmpfs" {
			if n, err := m.DeviceNumber(mi.MountPoint); err == nil {
				t.nodes[n] = append(t.nodes[n], mi)
			}
		}
	}
	return t, nil
}

// Uses lists the mounts of the table that use device, as Uses does.
func (t *MountTable) Uses(m Interface, device string) ([]Use, error) {
	want, err := m.DeviceNumber(device)
	if err != nil {
		return nil, err
	}
	return t.uses(want), nil
}

func (t *MountTable) uses(want uint64) []Use {
	var out []Use
	for _, mi := range t.infos {
		if uint32(mi.Major) == unix.Major(want) && uint32(mi.Minor) == unix.Minor(want) {
			out = append(out, Use{MountInfo: mi})
		}
	}
	for _, mi := range t.nodes[want] {
		out = append(out, Use{MountInfo: mi, DeviceNode: true})
	}
	return out
}
