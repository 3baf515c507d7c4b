package cluster

// ContainerdSocket is the socket of a real node's containerd, which serves
// the CRI the node's kubelet uses; "" for a kubelet-less node or before
// the node's containerd has started.
func (n *Node) ContainerdSocket() string {
	if n.real == nil {
		return ""
	}
	return n.real.containerd
}
