package simnet

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Addr is a simnet address: a node name and a port.
type Addr struct {
	Node string
	Port int
}

// Network is "simnet": the name of the network, as net.Addr requires.
func (a Addr) Network() string { return networkName }

// String is "node:port".
func (a Addr) String() string { return net.JoinHostPort(a.Node, strconv.Itoa(a.Port)) }

const networkName = "simnet"

// Port numbers. Ports in [firstEphemeralPort, lastEphemeralPort] are handed
// to the dialling end of connections and to listeners that ask for port 0.
const (
	maxPort            = 65535
	firstEphemeralPort = 49152
	lastEphemeralPort  = maxPort
)

// parseAddr splits "node:port". allowEmpty permits ":port" (the host part
// is then ""), and allowZero permits port 0.
func parseAddr(addr string, allowEmpty, allowZero bool) (Addr, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return Addr{}, fmt.Errorf("address %q: want node:port (%v)", addr, err)
	}
	if host == "" && !allowEmpty {
		return Addr{}, fmt.Errorf("address %q: no node name before the port", addr)
	}
	if strings.ContainsAny(host, " \t\n/") {
		return Addr{}, fmt.Errorf("address %q: node name %q has spaces or slashes", addr, host)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return Addr{}, fmt.Errorf("address %q: port %q is not a number", addr, portText)
	}
	lo := 1
	if allowZero {
		lo = 0
	}
	if port < lo || port > maxPort {
		return Addr{}, fmt.Errorf("address %q: port %d is outside [%d, %d]", addr, port, lo, maxPort)
	}
	return Addr{Node: host, Port: port}, nil
}

// checkNetwork accepts the network names a TCP caller would pass.
func checkNetwork(network string) error {
	switch network {
	case "tcp", "tcp4", "tcp6", networkName:
		return nil
	}
	return fmt.Errorf("network %q: simnet carries tcp, tcp4, tcp6 or simnet", network)
}
