package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DiskEvent is an ECS system event the tests inject into the fake ECS
// (cloud.FakeEvent).
type DiskEvent struct {
	ID, InstanceID, Type string
	// Status: Inquiring, Executing, Executed, ...
	Status         string
	DiskID, Device string
	CanAccept      bool
	Reason         string
}

// InjectEvent adds a system event to the fake ECS, as ECS does when it
// finds a damaged local disk.
func (cp *ControlPlane) InjectEvent(ctx context.Context, e DiskEvent) error {
	_, err := cp.ecsControl(ctx, "/events", e)
	return err
}

// AcceptedEvents lists the events accepted in the fake ECS, in order.
func (cp *ControlPlane) AcceptedEvents(ctx context.Context) ([]string, error) {
	out, err := cp.ecsCall(ctx, "GET", "/accepted", nil)
	if err != nil {
		return nil, err
	}
	var ids []string
	return ids, json.Unmarshal(out, &ids)
}

// Socket is the node driver's CSI socket.
func (n *Node) Socket() string { return n.sock }

// DiskID is the ECS ID of the node's disk i (its loop device i), as the
// fake ECS lists it now.
func (n *Node) DiskID(i int) string {
	if i >= len(n.diskIDs) {
		return ""
	}
	return n.diskIDs[i]
}

// ReplaceDisk carries out ECS's repair of the node's damaged disk i once
// its event was accepted: the event ends (Executed), and a new, blank disk
// with a new ECS ID and serial takes its place, at the same loop device
// (the node's driver is given its loop devices by path).
func (cp *ControlPlane) ReplaceDisk(ctx context.Context, n *Node, i int, eventID string) error {
	if _, err := cp.ecsControl(ctx, "/finish?event="+eventID, nil); err != nil {
		return err
	}
	loop := n.Loops[i]
	file := filepath.Join(n.dir, fmt.Sprintf("disk%d-replaced-%d.img", i, len(n.diskIDs)))
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := f.Truncate(n.disks[i].SizeBytes); err != nil {
		f.Close()
		return err
	}
	f.Close()
	if out, err := exec.CommandContext(ctx, "losetup", "--detach", loop).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup --detach %s: %v: %s", loop, err, out)
	}
	if out, err := exec.CommandContext(ctx, "losetup", loop, file).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup %s %s: %v: %s", loop, file, err, out)
	}
	id := fmt.Sprintf("d-%s-%d-r", n.Name, i)
	_, err = cp.ecsControl(ctx, "/replace-disk", map[string]any{"Old": n.diskIDs[i], "New": map[string]any{
		"ID": id, "Category": n.disks[i].Category, "InstanceID": n.InstanceID(), "Serial": file, "SizeGiB": int(n.disks[i].SizeBytes >> 30)}})
	if err != nil {
		return err
	}
	n.diskIDs[i] = id
	return nil
}

// Redeploy does to the node what ECS's redeploy does to an instance: the
// machine goes away at once (its driver and csi-provisioner are killed)
// and comes back on another host, where every local disk reads blank; the
// DaemonSet's containers start again. The node's disks must not be
// mounted (a redeploy reboots: the tests stop the pods first).
func (cp *ControlPlane) Redeploy(ctx context.Context, n *Node) error {
	for _, p := range n.procs {
		p.kill()
	}
	n.procs = nil
	for _, loop := range n.Loops {
		bin, args := "findmnt", []string{"--noheadings", "--source", loop}
		if n.real != nil {
			bin, args = n.real.inNode(bin, args...)
		}
		if out, _ := exec.CommandContext(ctx, bin, args...).Output(); strings.TrimSpace(string(out)) != "" {
			return fmt.Errorf("%s of %s is mounted: %s", loop, n.Name, out)
		}
		if out, err := exec.CommandContext(ctx, "blkdiscard", "--zeroout", loop).CombinedOutput(); err != nil {
			return fmt.Errorf("blanking %s: %v: %s", loop, err, out)
		}
	}
	if err := cp.startDriver(ctx, n); err != nil {
		return err
	}
	return cp.startProvisioner(ctx, n)
}
