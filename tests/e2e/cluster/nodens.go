package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// A real node with a network of its own (Config.NodeNetwork) also has a
// mount namespace of its own, as a machine has its own file system tree:
// its containerd, kubelet and driver run in it, and the storage suite's
// checks on the node find the node's kubelet where a kubelet lives.
//
//   - /var/lib/kubelet is the node's kubelet root (its directory under the
//     cluster's), a shared mount inside the namespace so that mounts
//     propagate between the kubelet, the driver and the containers; the
//     kubelet runs with --root-dir=/var/lib/kubelet.
//   - /proc/1 is the node's init process (the one holding the namespace):
//     the suite's host-exec pods enter "the host's" mount namespace through
//     /proc/1/ns/mnt of the host's root file system, and so enter the node's.
//
// The namespace is a slave of the machine's: the machine's mounts reach the
// node, the node's mounts (volumes, containers) never reach the machine,
// and they go when the namespace's last process ends. The machine's
// /var/lib/kubelet is only a mount point: created empty when it does not
// exist, and removed at Stop if the suite created it.

// nodeKubeletRoot is the kubelet's root directory inside a node's own
// mount namespace.
const nodeKubeletRoot = "/var/lib/kubelet"

// nodeInit is the node's init: it makes the mounts above, then sleeps,
// holding the namespace, until it is killed.
const nodeInit = `set -e
mount --bind "$1" /var/lib/kubelet
mount --make-rshared /var/lib/kubelet
mount --bind /proc/$$ /proc/1
touch "$2"
exec sleep 2147483647`

// startNodeSpace starts the node's init in the node's network namespace
// and a new mount namespace, and waits for its mounts.
func (cp *ControlPlane) startNodeSpace(ctx context.Context, n *Node) error {
	if _, err := os.Stat(nodeKubeletRoot); os.IsNotExist(err) {
		if err := os.MkdirAll(nodeKubeletRoot, 0o755); err != nil {
			return err
		}
		cp.madeKubeletDir = true
	}
	if err := os.MkdirAll(n.root(), 0o700); err != nil {
		return err
	}
	ready := filepath.Join(n.dir, "node-init.ready")
	bin, args := n.real.net.wrap("unshare", "--mount", "--propagation", "slave",
		"/bin/sh", "-c", nodeInit, "node-init", n.root(), ready)
	p, err := cp.procs.start(n.dir, "node-init", bin, args...)
	if err != nil {
		return err
	}
	n.real.init = p
	return waitFor(ctx, p, n.Name+" mount namespace", func() error { _, err := os.Stat(ready); return err })
}

// inNode is bin with args run in the node's namespaces: its mount and
// network namespaces when it has them, its network namespace when it has
// only that, the machine's otherwise.
func (rn *realNode) inNode(bin string, args ...string) (string, []string) {
	switch {
	case rn.init != nil:
		return "nsenter", append([]string{"--target=" + strconv.Itoa(rn.init.cmd.Process.Pid), "--mount", "--net", "--", bin}, args...)
	case rn.net != nil:
		return rn.net.wrap(bin, args...)
	}
	return bin, args
}

// kubeletRootIn is the kubelet's --root-dir on the node: /var/lib/kubelet
// in a mount namespace of the node's own, the node's directory otherwise.
func (n *Node) kubeletRootIn() string {
	if n.real != nil && n.real.init != nil {
		return nodeKubeletRoot
	}
	return n.root()
}

// removeKubeletDir removes the machine's /var/lib/kubelet if the suite made
// it (empty: the nodes only mounted over it, in their own namespaces).
func (cp *ControlPlane) removeKubeletDir() {
	if cp.madeKubeletDir {
		if err := os.Remove(nodeKubeletRoot); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: leaving %s: %v\n", nodeKubeletRoot, err)
		}
	}
}

// detachKubeletLoops detaches the loop devices the node's kubelet made for
// block volumes and left behind (a node stopped with pods on it): their
// backing files are device nodes bind-mounted under /var/lib/kubelet in the
// node's namespace, a path other nodes use too, so a loop device is the
// node's only when its backing file's device and inode are those of the
// path as the node sees it. Call it before the node's processes stop.
func (rn *realNode) detachKubeletLoops() {
	if rn.init == nil || rn.init.exited() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "losetup", "--list", "--noheadings", "--raw", "--output", "NAME,BACK-MAJ:MIN,BACK-INO,BACK-FILE").Output()
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 || !strings.HasPrefix(f[3], nodeKubeletRoot+"/") {
			continue
		}
		majMin := strings.Split(f[1], ":")
		if len(majMin) != 2 {
			continue
		}
		bin, args := rn.inNode("stat", "-c", "%Hd:%Ld %i", f[3])
		seen, err := exec.CommandContext(ctx, bin, args...).Output()
		if err == nil && strings.TrimSpace(string(seen)) == f[1]+" "+f[2] {
			_ = exec.CommandContext(ctx, "losetup", "--detach", f[0]).Run()
		}
	}
}
