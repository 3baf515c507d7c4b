package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// network is the cluster's own network, for real nodes that need an
// address the apiserver reaches (kubectl exec, logs and port-forward go
// from the apiserver to the node's kubelet, which refuses a loopback node
// IP): a bridge on the machine holding the apiserver's address, and per
// node a network namespace joined to the bridge by a veth pair. Its
// addresses come from a /16 of 10.0.0.0/8 that no route or address of the
// machine touches; nothing routes out of it, and the machine's other
// interfaces are never used.
type network struct {
	id     string     // random, names the bridge, the veths and the namespaces
	prefix [2]byte    // 10.x: the /16 the network owns
	host   net.IP     // the bridge's address, where the apiserver listens
	bridge string     // the bridge device
	spaces []*nodeNet // the nodes' namespaces, removed at close
}

// nodeNet is one node's network namespace.
type nodeNet struct {
	name string // as ip netns names it
	ip   net.IP // the node's address on the bridge
	pods string // the /24 its pods get addresses from, behind its own bridge
}

// path is the namespace's file, for nsenter --net.
func (nn *nodeNet) path() string { return filepath.Join("/run/netns", nn.name) }

// wrap prefixes a command with nsenter into the node's network namespace
// only: the mount namespace stays the machine's, so the kubelet, containerd
// and the driver (a host process) see the same mounts.
func (nn *nodeNet) wrap(bin string, args ...string) (string, []string) {
	return "nsenter", append([]string{"--net=" + nn.path(), "--", bin}, args...)
}

// newNetwork makes the bridge, on a /16 nothing on the machine uses.
func newNetwork() (*network, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	nw := &network{id: hex.EncodeToString(b)}
	used, err := ip("-o", "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	addrs, err := ip("-o", "-4", "addr", "show")
	if err != nil {
		return nil, err
	}
	taken := usedNets(used + addrs)
	found := false
	for x := 200; x < 255 && !found; x++ {
		cand := &net.IPNet{IP: net.IPv4(10, byte(x), 0, 0), Mask: net.CIDRMask(16, 32)}
		if !overlapsAny(cand, taken) {
			nw.prefix, found = [2]byte{10, byte(x)}, true
		}
	}
	if !found {
		return nil, fmt.Errorf("no free /16 in 10.200.0.0-10.254.255.255 for the cluster network")
	}
	nw.host = net.IPv4(nw.prefix[0], nw.prefix[1], 0, 1)
	nw.bridge = "ldbr" + nw.id
	if err := run("ip", "link", "add", nw.bridge, "type", "bridge"); err != nil {
		return nil, err
	}
	if err := run("ip", "addr", "add", nw.host.String()+"/24", "dev", nw.bridge); err != nil {
		nw.close()
		return nil, err
	}
	if err := run("ip", "link", "set", nw.bridge, "up"); err != nil {
		nw.close()
		return nil, err
	}
	return nw, nil
}

// addNode makes the next node's namespace, its veth pair (one end on the
// bridge, the other in the namespace with the node's address) and its
// loopback, with the bridge's network its only route.
func (nw *network) addNode() (*nodeNet, error) {
	i := len(nw.spaces) + 1
	if i > 200 {
		return nil, fmt.Errorf("the cluster network has room for 200 nodes")
	}
	nn := &nodeNet{
		name: fmt.Sprintf("ldns%s-%d", nw.id, i),
		ip:   net.IPv4(nw.prefix[0], nw.prefix[1], 0, byte(i+1)),
		pods: fmt.Sprintf("%d.%d.%d.0/24", nw.prefix[0], nw.prefix[1], i),
	}
	if err := run("ip", "netns", "add", nn.name); err != nil {
		return nil, err
	}
	nw.spaces = append(nw.spaces, nn)
	host, peer := fmt.Sprintf("ldh%s%d", nw.id, i), fmt.Sprintf("ldp%s%d", nw.id, i)
	steps := [][]string{
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", host, "master", nw.bridge},
		{"ip", "link", "set", host, "up"},
		{"ip", "link", "set", peer, "netns", nn.name},
		{"ip", "-n", nn.name, "link", "set", peer, "name", "eth0"},
		{"ip", "-n", nn.name, "addr", "add", nn.ip.String() + "/24", "dev", "eth0"},
		{"ip", "-n", nn.name, "link", "set", "eth0", "up"},
		{"ip", "-n", nn.name, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	return nn, nil
}

// close removes the namespaces (their veth pairs go with them) and the
// bridge. The processes in a namespace must be stopped first.
func (nw *network) close() {
	for _, nn := range nw.spaces {
		_ = run("ip", "netns", "delete", nn.name)
	}
	nw.spaces = nil
	_ = run("ip", "link", "delete", nw.bridge)
}

// usedNets parses the networks in `ip -o -4 route` and `ip -o -4 addr`
// output: every a.b.c.d/n and every bare address (a /32).
func usedNets(out string) []*net.IPNet {
	var nets []*net.IPNet
	for _, f := range strings.Fields(out) {
		if _, n, err := net.ParseCIDR(f); err == nil {
			nets = append(nets, n)
		} else if a := net.ParseIP(f); a != nil && a.To4() != nil {
			nets = append(nets, &net.IPNet{IP: a.To4(), Mask: net.CIDRMask(32, 32)})
		}
	}
	return nets
}

// overlapsAny reports whether n shares an address with any of nets; the
// default route (0.0.0.0/0) does not count, it is where the machine's
// traffic goes, not a network it has.
func overlapsAny(n *net.IPNet, nets []*net.IPNet) bool {
	for _, o := range nets {
		if ones, _ := o.Mask.Size(); ones == 0 {
			continue
		}
		if n.Contains(o.IP) || o.Contains(n.IP) {
			return true
		}
	}
	return false
}

func ip(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func run(bin string, args ...string) error {
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", bin, strings.Join(args, " "), err, out)
	}
	return nil
}

// cniPluginDir is where Debian's containernetworking-plugins puts the
// bridge, host-local and loopback plugins.
const cniPluginDir = "/usr/lib/cni"

// writePodNetwork writes the CNI configuration of a node with a network of
// its own into dir/conf: a bridge inside the node's namespace, addresses
// from pods (the node's /24) kept under dir/ipam. Pods reach their node and
// each other on it; nothing routes them further, and the storage tests ask
// for no more.
func writePodNetwork(dir, pods string) error {
	conf := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "e2e-pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "dataDir": %q}},
    {"type": "loopback"}
  ]
}
`, pods, filepath.Join(dir, "ipam"))
	return os.WriteFile(filepath.Join(dir, "conf", "10-pods.conflist"), []byte(conf), 0o600)
}
