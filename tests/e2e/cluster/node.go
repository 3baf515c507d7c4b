package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// DriverName is the CSI driver under test.
const DriverName = "localdisk.csi.alibabacloud.com"

// TopologyKey is the driver's one topology key.
const TopologyKey = "topology." + DriverName + "/node"

// DiskSpec is one loop-device disk of a node.
type DiskSpec struct {
	SizeBytes int64
	HDD       bool
	// Category, when set on any disk of a node, makes that node's driver
	// find its disks through the ECS source, against a fake ECS on loopback
	// (the fakeecs command) that lists each disk with its category; a loop
	// device's serial, as the ECS source sees it, is its backing file.
	Category string
}

// Node is one node of the cluster: its loop-device disks and its own driver
// and csi-provisioner processes. A fake node is a Node and a CSINode object
// made by the suite; a real node has a kubelet and containerd.
type Node struct {
	Name  string
	Loops []string
	Real  bool
	dir   string
	sock  string // the driver's CSI socket
	disks []DiskSpec
}

// AddFakeNode creates the node's disks, starts its driver and provisioner,
// and registers the node with the apiserver.
func (cp *ControlPlane) AddFakeNode(ctx context.Context, name string, disks []DiskSpec) (*Node, error) {
	n, err := cp.newNode(name, disks)
	if err != nil {
		return nil, err
	}
	if err := cp.startDriver(ctx, n, filepath.Join(n.dir, "csi.sock")); err != nil {
		return nil, err
	}
	if _, err := cp.Kubectl(ctx, fakeNodeYAML(name, len(disks)), "apply", "-f", "-"); err != nil {
		return nil, err
	}
	return n, cp.startProvisioner(ctx, n)
}

func (cp *ControlPlane) newNode(name string, disks []DiskSpec) (*Node, error) {
	n := &Node{Name: name, dir: filepath.Join(cp.cfg.Dir, "nodes", name), disks: disks}
	if err := os.MkdirAll(n.dir, 0o700); err != nil {
		return nil, err
	}
	for i, d := range disks {
		loop, err := cp.attachLoop(filepath.Join(n.dir, fmt.Sprintf("disk%d.img", i)), d)
		if err != nil {
			return nil, err
		}
		n.Loops = append(n.Loops, loop)
	}
	return n, nil
}

// startDriver runs the driver under test for the node, serving sock.
func (cp *ControlPlane) startDriver(ctx context.Context, n *Node, sock string) error {
	n.sock = sock
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return err
	}
	args := []string{"--endpoint=unix://" + sock, "--node-id=" + n.Name,
		"--state-dir=" + filepath.Join(n.dir, "state"), "--devices=" + strings.Join(n.Loops, ","), "--v=2"}
	var env []string
	metadata, api, err := cp.fakeECS(ctx, n)
	if err != nil {
		return err
	}
	if metadata != "" {
		args = append(args, "--disk-source=ecs", "--metadata-endpoint="+metadata, "--ecs-endpoint="+api)
		env = []string{"ALIBABA_CLOUD_ACCESS_KEY_ID=LTAIe2e", "ALIBABA_CLOUD_ACCESS_KEY_SECRET=e2e-secret"}
	}
	drv, err := cp.procs.startEnv(n.dir, "driver", cp.cfg.Driver, env, args...)
	if err != nil {
		return err
	}
	return waitFor(ctx, drv, n.Name+" driver socket", func() error { _, err := os.Stat(sock); return err })
}

// fakeECS starts a fake ECS (the fakeecs command) for a node whose disks
// have categories and returns its metadata and OpenAPI URLs, or "", "".
func (cp *ControlPlane) fakeECS(ctx context.Context, n *Node) (metadata, api string, err error) {
	categorized := false
	for _, d := range n.disks {
		categorized = categorized || d.Category != ""
	}
	if !categorized {
		return "", "", nil
	}
	if cp.cfg.FakeECS == "" {
		return "", "", fmt.Errorf("%s has disks with categories but Config.FakeECS is not set", n.Name)
	}
	type disk struct {
		ID, Category, InstanceID, Serial string
		SizeGiB                          int
	}
	id := "i-" + n.Name
	spec := map[string]any{
		"Instance": map[string]string{"ID": id, "Type": "ecs.e2e", "Region": "cn-hangzhou", "Zone": "cn-hangzhou-k"},
		"Type":     map[string]any{"LocalStorageAmount": len(n.Loops), "LocalStorageGiB": 1, "LocalStorageCategory": "local_ssd_pro"},
	}
	var ds []disk
	for i, loop := range n.Loops {
		backing, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loop), "loop/backing_file"))
		ds = append(ds, disk{ID: fmt.Sprintf("d-%s-%d", n.Name, i), Category: n.disks[i].Category,
			InstanceID: id, Serial: strings.TrimSpace(string(backing)), SizeGiB: int(n.disks[i].SizeBytes >> 30)})
	}
	spec["Disks"] = ds
	b, _ := json.Marshal(spec)
	specPath, urlsPath := filepath.Join(n.dir, "ecs-spec.json"), filepath.Join(n.dir, "ecs-urls.json")
	if err := os.WriteFile(specPath, b, 0o600); err != nil {
		return "", "", err
	}
	p, err := cp.procs.start(n.dir, "fakeecs", cp.cfg.FakeECS, "--spec="+specPath, "--urls="+urlsPath)
	if err != nil {
		return "", "", err
	}
	var urls struct{ Metadata, API string }
	err = waitFor(ctx, p, n.Name+" fake ECS", func() error {
		b, err := os.ReadFile(urlsPath)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &urls)
	})
	return urls.Metadata, urls.API, err
}

// startProvisioner runs the node's csi-provisioner in distributed mode, as
// the DaemonSet in deploy/kubernetes does; as a host process it has no pod
// to own the CSIStorageCapacity objects (--capacity-ownerref-level=-1).
func (cp *ControlPlane) startProvisioner(ctx context.Context, n *Node) error {
	poll := cp.cfg.CapacityPoll
	if poll == 0 {
		poll = 5 * time.Second
	}
	prov, err := cp.procs.startEnv(n.dir, "csi-provisioner", cp.bin("csi-provisioner"),
		[]string{"NODE_NAME=" + n.Name, "NAMESPACE=default", "POD_NAME=provisioner-" + n.Name},
		"--kubeconfig="+cp.Kubeconfig, "--csi-address="+n.sock, "--v=3",
		"--node-deployment", "--enable-capacity", "--capacity-ownerref-level=-1", "--strict-topology",
		"--immediate-topology=false", "--extra-create-metadata", "--capacity-poll-interval="+poll.String(),
		"--node-deployment-immediate-binding=false", "--kube-api-qps=50", "--kube-api-burst=100")
	if err != nil {
		return err
	}
	// Ready once it has probed the driver and runs its capacity controller
	// (the CSIStorageCapacity objects follow per StorageClass).
	return waitFor(ctx, prov, n.Name+" csi-provisioner", func() error {
		b, err := os.ReadFile(prov.log)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "Starting Capacity Controller") {
			return fmt.Errorf("capacity controller not started")
		}
		return nil
	})
}

func fakeNodeYAML(name string, disks int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Node
metadata:
  name: %[1]s
  labels:
    kubernetes.io/hostname: %[1]s
    kubernetes.io/os: linux
    %[2]s: %[1]s
status:
  capacity: {cpu: "8", memory: 32Gi, pods: "110"}
  allocatable: {cpu: "8", memory: 32Gi, pods: "110"}
  conditions:
  - {type: Ready, status: "True", reason: Fake, message: kubelet-less node of the e2e suite}
---
apiVersion: storage.k8s.io/v1
kind: CSINode
metadata:
  name: %[1]s
spec:
  drivers:
  - name: %[3]s
    nodeID: %[1]s
    topologyKeys: [%[2]s]
    allocatable: {count: %[4]d}
`, name, TopologyKey, DriverName, disks)
}

// attachLoop makes a sparse file and a loop device on it, detached at Stop.
func (cp *ControlPlane) attachLoop(file string, d DiskSpec) (string, error) {
	f, err := os.Create(file)
	if err != nil {
		return "", err
	}
	if err := f.Truncate(d.SizeBytes); err != nil {
		f.Close()
		return "", err
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", file).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	cp.loops = append(cp.loops, loop)
	rot := "0"
	if d.HDD {
		rot = "1"
	}
	return loop, os.WriteFile(filepath.Join("/sys/block", filepath.Base(loop), "queue/rotational"), []byte(rot), 0o644)
}

// detachKubeletLoops detaches the loop devices the kubelet made for block
// volumes: their backing files are device nodes bind-mounted in the
// cluster directory, which they keep busy.
func (cp *ControlPlane) detachKubeletLoops() {
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[1], cp.cfg.Dir+"/") && !slices.Contains(cp.loops, f[0]) {
			_ = exec.Command("losetup", "--detach", f[0]).Run()
		}
	}
}

// detachLoops detaches the loop devices the cluster made for its disks.
func (cp *ControlPlane) detachLoops() {
	for _, l := range cp.loops {
		_ = exec.Command("blockdev", "--setrw", l).Run()
		_ = exec.Command("losetup", "--detach", l).Run()
	}
	cp.loops = nil
}

// WaitFor polls check every 200ms until it succeeds or ctx ends.
func WaitFor(ctx context.Context, what string, check func() error) error {
	return waitFor(ctx, nil, what, check)
}

// Log is the path of the log of one of the node's processes: "driver",
// "csi-provisioner", "kubelet" or "containerd".
func (n *Node) Log(process string) string { return filepath.Join(n.dir, process+".log") }
