package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// realNode is what a real node runs besides the driver: containerd, the
// kubelet and the driver's registration with it.
type realNode struct {
	containerd string // containerd's socket
	kubelet    *proc
	kubeletCmd []string // the kubelet's command line, to start it again
	starts     int      // kubelet starts so far: the first logs to kubelet.log, the next to kubelet-2.log...
	registrar  *grpc.Server
	// net is the node's own network namespace, nil for a node on the
	// machine's network with a loopback node IP (Config.NodeNetwork).
	net *nodeNet
	// init holds the node's own mount namespace (see nodens.go), nil for a
	// node on the machine's network.
	init    *proc
	cgroups []string // cgroup directories the node's containers made
}

// AddRealNode starts containerd and a kubelet for a node called name, with
// the images imported, runs the driver and csi-provisioner containers of
// the DaemonSet as host processes, and registers the driver with the
// kubelet through the plugin-registration API, as the DaemonSet's
// node-driver-registrar would. Pods on it run for real: volumes are staged
// and published by the kubelet through the driver. Deploy must have run.
//
// With Config.NodeNetwork the node's containerd and kubelet run in a
// network namespace of the node's own, with an address on the cluster
// network: the apiserver reaches its kubelet (kubectl exec), and several
// real nodes each have their ports. Without it there is one real node, on
// the machine's network with a loopback node IP.
//
// The node is not labelled for the DaemonSet, so it gets no DaemonSet pod:
// its kubelet would run that pod, with hostPath volumes naming this
// machine's own /var/lib/kubelet (the suite's kubelet has its root in a
// temporary directory), /dev and /sys, and images that are not built here.
// Its provisioner therefore has no pod to find the CSIStorageCapacity
// objects' owner from (see hostProcess); its token is bound to the Node.
func (cp *ControlPlane) AddRealNode(ctx context.Context, name string, disks []DiskSpec) (*Node, error) {
	if len(cp.reals) > 0 && cp.net == nil {
		return nil, fmt.Errorf("a second real node needs a network of its own (Config.NodeNetwork)")
	}
	if cp.deployed == nil {
		return nil, fmt.Errorf("no deployment: call Deploy first")
	}
	n, err := cp.newNode(name, disks)
	if err != nil {
		return nil, err
	}
	n.Real = true
	n.real = &realNode{}
	cp.reals = append(cp.reals, n)
	if cp.net != nil {
		if n.real.net, err = cp.net.addNode(); err != nil {
			return nil, err
		}
		if err := cp.startNodeSpace(ctx, n); err != nil {
			return nil, err
		}
	}
	cgroupRoot := "/ecs-localdisk-e2e-" + name
	n.real.cgroups = newCgroups(cgroupRoot)
	// The kubelet wants its cgroup root to exist.
	for _, d := range n.real.cgroups {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	cd := filepath.Join(n.dir, "containerd")
	sock := filepath.Join(cd, "containerd.sock")
	if err := cp.startContainerd(ctx, n, cd, sock); err != nil {
		return nil, err
	}
	if err := cp.startKubelet(ctx, n, n.kubeletRootIn(), sock, cgroupRoot); err != nil {
		return nil, err
	}
	if err := cp.startDriver(ctx, n); err != nil {
		return nil, err
	}
	if err := cp.registerPlugin(ctx, n); err != nil {
		return nil, err
	}
	return n, cp.startProvisioner(ctx, n)
}

// containerdConfig is the start of a containerd configuration of the
// suite's own: its root, state and plugin directories under dir, its
// sockets at sock, the snapshotters this machine lacks and the plugins in
// disable switched off.
func containerdConfig(dir, sock string, disable []string) string {
	off := append([]string{"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
		"io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"}, disable...)
	quoted := make([]string, len(off))
	for i, p := range off {
		quoted[i] = strconv.Quote(p)
	}
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = [%[6]s]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "opt"), strings.Join(quoted, ", "))
}

// startIn starts a node process in the node's namespaces (see inNode).
func (cp *ControlPlane) startIn(n *Node, name string, env []string, bin string, args ...string) (*proc, error) {
	bin, args = n.real.inNode(bin, args...)
	return cp.procs.startEnv(n.dir, name, bin, env, args...)
}

func (cp *ControlPlane) startContainerd(ctx context.Context, n *Node, dir, sock string) error {
	// Without a network of its own, the node has no CNI: every pod of the
	// suite uses the host network. With one, pods get addresses from
	// Debian's CNI plugins on a bridge inside the node's namespace.
	cniBin := filepath.Join(dir, "cni/bin")
	if n.real.net != nil {
		cniBin = cniPluginDir
	}
	for _, d := range []string{"root", "state", "opt", "cni/bin", "cni/conf"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	cfg := containerdConfig(dir, sock, nil) + fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[1]q
  # Needed on this kind of machine: the runtime may not lower its OOM score.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[2]q
    conf_dir = %[3]q
`, BusyboxImage, cniBin, filepath.Join(dir, "cni/conf"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	if nn := n.real.net; nn != nil {
		if err := writePodNetwork(filepath.Join(dir, "cni"), nn.pods); err != nil {
			return err
		}
	}
	p, err := cp.startIn(n, "containerd", nil, "containerd", "--config", cfgPath, "--log-level=warn")
	if err != nil {
		return err
	}
	n.real.containerd = sock
	if err := waitFor(ctx, p, "containerd", func() error {
		return exec.CommandContext(ctx, "ctr", "--address", sock, "version").Run()
	}); err != nil {
		return err
	}
	tarball := filepath.Join(dir, "busybox-oci.tar")
	if err := buildBusyboxOCI("/bin/busybox", tarball); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "ctr", "--address", sock, "-n", "k8s.io", "images", "import", tarball).CombinedOutput(); err != nil {
		return fmt.Errorf("importing busybox: %v: %s", err, out)
	}
	for _, archive := range cp.cfg.Images {
		if out, err := exec.CommandContext(ctx, "ctr", "--address", sock, "-n", "k8s.io", "images", "import", archive).CombinedOutput(); err != nil {
			return fmt.Errorf("importing %s: %v: %s", archive, err, out)
		}
	}
	out, err := exec.CommandContext(ctx, "ctr", "--address", sock, "-n", "k8s.io", "images", "ls", "-q").CombinedOutput()
	if err != nil || !strings.Contains(string(out), BusyboxImage) {
		return fmt.Errorf("busybox image not imported (%v): %s", err, out)
	}
	return nil
}

func (cp *ControlPlane) startKubelet(ctx context.Context, n *Node, root, runtimeSock, cgroupRoot string) error {
	if err := cp.pki.issue("kubelet-"+n.Name, "system:node:"+n.Name, []string{"system:nodes"}, nil, nil, false); err != nil {
		return err
	}
	kubeconfig, err := cp.writeKubeconfig("kubelet-" + n.Name)
	if err != nil {
		return err
	}
	// In its own namespace the kubelet has the usual port on the node's
	// address; on the machine's network, a free loopback port.
	address, port := "127.0.0.1", 10250
	if nn := n.real.net; nn != nil {
		address = nn.ip.String()
	} else if port, err = freePort(); err != nil {
		return err
	}
	if err := os.MkdirAll(n.root(), 0o700); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: %d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %q}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://%s
# cgroup v1 on this machine, and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
# The node's pods go under a cgroup of the node's own (the kubelet makes
# its kubepods hierarchy below it).
cgroupsPerQOS: true
cgroupRoot: %q
enforceNodeAllocatable: []
failSwapOn: false
volumePluginDir: %q
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "0%%", imagefs.available: "0%%", nodefs.inodesFree: "0%%"}
localStorageCapacityIsolation: false
serializeImagePulls: false
resolvConf: ""
# The node's own, not the machine's /var/log/pods: a kubelet removes the
# log directories of pods it does not know.
podLogsDir: %q
`, address, port, cp.pki.path("ca.crt"), runtimeSock, cgroupRoot, filepath.Join(root, "volume-plugins"), filepath.Join(n.dir, "pod-logs"))
	cfgPath := filepath.Join(n.dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	n.real.kubeletCmd = []string{cp.bin("kubelet"), "--config=" + cfgPath, "--kubeconfig=" + kubeconfig,
		"--root-dir=" + root, "--hostname-override=" + n.Name, "--node-ip=" + address, "--v=2"}
	return cp.runKubelet(ctx, n)
}

// runKubelet starts the node's kubelet with its command line and waits
// until its Node object exists.
func (cp *ControlPlane) runKubelet(ctx context.Context, n *Node) error {
	n.real.starts++
	name := "kubelet"
	if n.real.starts > 1 {
		name = fmt.Sprintf("kubelet-%d", n.real.starts)
	}
	p, err := cp.startIn(n, name, nil, n.real.kubeletCmd[0], n.real.kubeletCmd[1:]...)
	if err != nil {
		return err
	}
	n.real.kubelet = p
	return waitFor(ctx, p, "kubelet registers "+n.Name, func() error {
		_, err := cp.Kubectl(ctx, "", "get", "node", n.Name)
		return err
	})
}

// registrar answers the kubelet's plugin watcher for the driver.
type registrar struct {
	registerapi.UnimplementedRegistrationServer
	endpoint string
	status   chan *registerapi.RegistrationStatus
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: DriverName, Endpoint: r.endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	select {
	case r.status <- s:
	default:
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// registerPlugin does the DaemonSet's node-driver-registrar's work: it
// serves the registration socket in the directory the registrar's
// /registration mount names, announces the endpoint its
// --kubelet-registration-path names, and waits until the kubelet has put
// the driver in the node's CSINode object.
func (cp *ControlPlane) registerPlugin(ctx context.Context, n *Node) error {
	ds := cp.deployed.static
	c, err := Container(ds, "node-driver-registrar")
	if err != nil {
		return err
	}
	dir, ok := containerToHost(&ds.Spec.Template.Spec, c, n, "/registration")
	if !ok {
		return fmt.Errorf("node-driver-registrar mounts no hostPath at /registration")
	}
	endpoint := ""
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--kubelet-registration-path="); ok {
			endpoint = n.hostPath(v)
		}
	}
	// The registrar tells the kubelet a path of the machine: it must be the
	// driver's socket, where the driver container's endpoint lies.
	if endpoint != n.sock {
		return fmt.Errorf("node-driver-registrar's --kubelet-registration-path is %s on this node, the driver serves %s", endpoint, n.sock)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// The kubelet asks for the node's topology as soon as it is told of the
	// driver, which refuses until it has its disks; the registrar then exits
	// and the kubelet restarts it, so it registers again. The same here, a
	// second later, a bounded number of times.
	const attempts = 20
	for attempt := 1; ; attempt++ {
		status, err := n.real.serveRegistration(filepath.Join(dir, DriverName+"-reg.sock"), endpoint)
		if err != nil {
			return err
		}
		var s *registerapi.RegistrationStatus
		select {
		case s = <-status:
		case <-ctx.Done():
			return fmt.Errorf("kubelet never asked for the driver's registration: %w", ctx.Err())
		}
		if s.PluginRegistered {
			break
		}
		if attempt == attempts {
			return fmt.Errorf("kubelet refused the driver %d times, last: %s", attempts, s.Error)
		}
		n.real.registrar.Stop()
		n.real.registrar = nil
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return fmt.Errorf("kubelet refused the driver: %s", s.Error)
		}
	}
	return WaitFor(ctx, "CSINode of "+n.Name, func() error {
		out, err := cp.Kubectl(ctx, "", "get", "csinode", n.Name, "-o", "jsonpath={.spec.drivers[*].name}")
		if err != nil {
			return err
		}
		if !strings.Contains(out, DriverName) {
			return fmt.Errorf("driver not in CSINode: %q", out)
		}
		return nil
	})
}

// serveRegistration serves the plugin-registration API on sock, announcing
// the driver at endpoint, and returns the channel the kubelet's verdict
// arrives on.
func (rn *realNode) serveRegistration(sock, endpoint string) (<-chan *registerapi.RegistrationStatus, error) {
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	r := &registrar{endpoint: endpoint, status: make(chan *registerapi.RegistrationStatus, 1)}
	registerapi.RegisterRegistrationServer(srv, r)
	go func() { _ = srv.Serve(l) }()
	rn.registrar = srv
	return r.status, nil
}

// stopRealNodes stops every real node, newest first.
func (cp *ControlPlane) stopRealNodes() {
	for i := len(cp.reals) - 1; i >= 0; i-- {
		cp.reals[i].real.stop()
	}
}

// stop stops the kubelet, then every container of the node by the PIDs of
// their shims, before the remaining processes stop. The kubelet goes first,
// so nothing restarts the containers. The pods' network namespaces, which
// containerd would remove when the kubelet stops the pods, are removed
// here: those its sandboxes name, and only those.
func (rn *realNode) stop() {
	if rn.registrar != nil {
		rn.registrar.Stop()
	}
	if rn.kubelet != nil {
		rn.kubelet.stop(10 * time.Second)
	}
	rn.detachKubeletLoops()
	if rn.containerd == "" {
		return
	}
	ctr := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "ctr", append([]string{"--address", rn.containerd, "-n", "k8s.io"}, args...)...).Output()
		return string(out)
	}
	var podNets []string
	for _, id := range strings.Fields(ctr("containers", "ls", "-q")) {
		podNets = append(podNets, podNetns(ctr("containers", "info", id))...)
	}
	tasks := strings.Fields(ctr("tasks", "ls", "-q"))
	for _, id := range tasks {
		ctr("tasks", "kill", "-s", "SIGKILL", id)
	}
	for i := 0; i < 50 && strings.Contains(ctr("tasks", "ls"), "RUNNING"); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	for _, id := range tasks {
		ctr("tasks", "delete", "--force", id)
	}
	// Whatever shim is left (containerd already gone, say) dies by PID.
	for _, pid := range shimPIDs(rn.containerd) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, p := range podNets {
		_ = syscall.Unmount(p, syscall.MNT_DETACH)
		_ = os.Remove(p)
	}
}

// podNetns returns the network namespace file a container's spec joins,
// when it is one containerd made for a pod (under /var/run/netns or
// /run/netns, named cni-*): `ctr containers info` prints the spec as JSON.
func podNetns(info string) []string {
	var c struct {
		Spec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string }
			}
		}
	}
	if json.Unmarshal([]byte(info), &c) != nil {
		return nil
	}
	var out []string
	for _, ns := range c.Spec.Linux.Namespaces {
		dir, base := filepath.Dir(ns.Path), filepath.Base(ns.Path)
		if ns.Type == "network" && (dir == "/var/run/netns" || dir == "/run/netns") && strings.HasPrefix(base, "cni-") {
			out = append(out, ns.Path)
		}
	}
	return out
}

// shimPIDs lists the containerd shims serving the containerd at address.
func shimPIDs(address string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.Contains(args[0], "containerd-shim") && strings.Contains(string(b), address) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Exec runs a command in the first container of a pod on a real node. On
// a node with a network of its own it is kubectl exec, through the
// apiserver and the node's kubelet. On a node on the machine's network it
// goes through containerd (ctr tasks exec): kubectl exec would need the
// apiserver to reach the kubelet at the node's address, and the kubelet
// refuses a loopback node IP.
func (cp *ControlPlane) Exec(ctx context.Context, namespace, pod string, cmd ...string) (string, error) {
	out, err := cp.Kubectl(ctx, "", "get", "pod", "-n", namespace, pod, "-o", "jsonpath={.spec.nodeName} {.status.containerStatuses[0].containerID}")
	if err != nil {
		return "", err
	}
	nodeName, id, _ := strings.Cut(strings.TrimSpace(out), " ")
	n := cp.realNode(nodeName)
	if n == nil {
		return "", fmt.Errorf("pod %s/%s is not on a real node (node %q)", namespace, pod, nodeName)
	}
	if n.real.net != nil {
		return cp.Kubectl(ctx, "", append([]string{"exec", "-n", namespace, pod, "--"}, cmd...)...)
	}
	id = strings.TrimPrefix(id, "containerd://")
	if id == "" {
		return "", fmt.Errorf("pod %s/%s has no container on %s", namespace, pod, nodeName)
	}
	cp.execs++
	args := append([]string{"--address", n.real.containerd, "-n", "k8s.io", "tasks", "exec", "--exec-id", fmt.Sprintf("e2e-%d", cp.execs), id}, cmd...)
	b, err := exec.CommandContext(ctx, "ctr", args...).CombinedOutput()
	if err != nil {
		return string(b), fmt.Errorf("exec in %s/%s %v: %w: %s", namespace, pod, cmd, err, b)
	}
	return string(b), nil
}

// realNode is the real node called name, or nil.
func (cp *ControlPlane) realNode(name string) *Node {
	for _, n := range cp.reals {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// newCgroups lists the cgroup directories called name (the parent of the
// containers' cgroups) that do not exist yet, in every cgroup hierarchy
// mounted under /sys/fs/cgroup (v1 controllers, or the v2 root): those are
// the suite's to remove.
func newCgroups(name string) []string {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	var dirs []string
	for _, r := range roots {
		var st syscall.Statfs_t
		if err := syscall.Statfs(r, &st); err != nil || (st.Type != cgroupMagic && st.Type != cgroup2Magic) {
			continue
		}
		d := filepath.Join(r, name)
		if _, err := os.Stat(d); os.IsNotExist(err) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// The statfs magic numbers of cgroup v1 and v2 (linux/magic.h).
const (
	cgroupMagic  = 0x27e0eb
	cgroup2Magic = 0x63677270
)

// removeCgroups removes the cgroup trees below dirs, deepest first; a
// cgroup with a process left in it stays (rmdir fails), never killed here.
func removeCgroups(dirs []string) {
	// A cgroup whose last process just died can stay busy for a moment.
	for attempt := 0; attempt < 20 && len(dirs) > 0; attempt++ {
		var left []string
		for _, d := range dirs {
			var tree []string
			_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
				if err == nil && e.IsDir() {
					tree = append(tree, p)
				}
				return nil
			})
			for i := len(tree) - 1; i >= 0; i-- {
				_ = syscall.Rmdir(tree[i])
			}
			if _, err := os.Stat(d); err == nil {
				left = append(left, d)
			}
		}
		dirs = left
		if len(dirs) > 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
}
