package boundary

import "strings"

// Rule names one way code can reach the world outside the simulation. Every
// diagnostic carries exactly one rule, and the allow-list grants rules to
// packages.
type Rule string

// The rules. Their order here is the order -rules and the allow-list print.
const (
	// Socket: opening a real listener or connection, or asking the host's
	// resolver or network interfaces. Under simulation the network is
	// simnet, reached through a net.Listener or a dial func the caller
	// passes in.
	Socket Rule = "socket"
	// HTTPDefault: net/http's package-level client and transport, and
	// clients or transports built without a dial func. They dial real
	// sockets on their own, so code that uses them cannot be handed simnet.
	HTTPDefault Rule = "http-default"
	// Exec: starting or signalling real processes (os/exec, os.StartProcess).
	Exec Rule = "exec"
	// Syscall: functions and variables of the raw system call packages
	// (syscall, golang.org/x/sys/unix, ...). Their constants and types are
	// not calls: syscall.ECONNRESET as an error value is how simnet makes
	// its errors match the real network's under errors.Is.
	Syscall Rule = "syscall"
	// Plugin: loading native code at run time.
	Plugin Rule = "plugin"
)

// Rules lists every rule, in a stable order.
var Rules = []Rule{Socket, HTTPDefault, Exec, Syscall, Plugin}

// advice says, per rule, what simulated code does instead. It ends every
// diagnostic of that rule.
var advice = map[Rule]string{
	Socket:      "take a net.Listener or a dial func from the caller (simnet supplies them under simulation)",
	HTTPDefault: "take an *http.Client from the caller whose Transport dials through an injected DialContext",
	Exec:        "go through the sandbox or VM interface, whose simulated implementation runs in memory",
	Syscall:     "use os, io/fs or a boundary interface; raw syscalls do not exist under wasip1",
	Plugin:      "link the code in; a plugin is native code the simulation cannot control",
}

// banned is one forbidden identifier or import: the rule it breaks and what
// it does, which becomes the middle of the diagnostic.
type banned struct {
	rule Rule
	does string
}

// bannedObjects holds the forbidden functions, methods and variables, keyed
// by import path and name: "net.Dial", "net.Dialer.Dial" for a method
// (receiver type name between), "net/http.DefaultClient" for a variable.
// Any reference counts, not only calls: `f := net.Dial` is the same escape.
var bannedObjects = map[string]banned{
	// net: connections and listeners.
	"net.Dial":                      {Socket, "opens a real socket"},
	"net.DialTimeout":               {Socket, "opens a real socket"},
	"net.DialTCP":                   {Socket, "opens a real socket"},
	"net.DialUDP":                   {Socket, "opens a real socket"},
	"net.DialIP":                    {Socket, "opens a real socket"},
	"net.DialUnix":                  {Socket, "opens a real socket"},
	"net.Listen":                    {Socket, "opens a real listening socket"},
	"net.ListenPacket":              {Socket, "opens a real listening socket"},
	"net.ListenTCP":                 {Socket, "opens a real listening socket"},
	"net.ListenUDP":                 {Socket, "opens a real listening socket"},
	"net.ListenIP":                  {Socket, "opens a real listening socket"},
	"net.ListenUnix":                {Socket, "opens a real listening socket"},
	"net.ListenUnixgram":            {Socket, "opens a real listening socket"},
	"net.ListenMulticastUDP":        {Socket, "opens a real listening socket"},
	"net.FileListener":              {Socket, "wraps a real socket file descriptor"},
	"net.FileConn":                  {Socket, "wraps a real socket file descriptor"},
	"net.FilePacketConn":            {Socket, "wraps a real socket file descriptor"},
	"net.Dialer.Dial":               {Socket, "opens a real socket"},
	"net.Dialer.DialContext":        {Socket, "opens a real socket"},
	"net.Dialer.DialTCP":            {Socket, "opens a real socket"},
	"net.Dialer.DialUDP":            {Socket, "opens a real socket"},
	"net.Dialer.DialIP":             {Socket, "opens a real socket"},
	"net.Dialer.DialUnix":           {Socket, "opens a real socket"},
	"net.ListenConfig.Listen":       {Socket, "opens a real listening socket"},
	"net.ListenConfig.ListenPacket": {Socket, "opens a real listening socket"},
	// net: the host's resolver and interfaces. A Resolver the caller builds
	// with its own Dial is fine; the default one asks the host.
	"net.LookupHost":       {Socket, "asks the host's resolver"},
	"net.LookupIP":         {Socket, "asks the host's resolver"},
	"net.LookupAddr":       {Socket, "asks the host's resolver"},
	"net.LookupCNAME":      {Socket, "asks the host's resolver"},
	"net.LookupMX":         {Socket, "asks the host's resolver"},
	"net.LookupNS":         {Socket, "asks the host's resolver"},
	"net.LookupPort":       {Socket, "asks the host's resolver"},
	"net.LookupSRV":        {Socket, "asks the host's resolver"},
	"net.LookupTXT":        {Socket, "asks the host's resolver"},
	"net.DefaultResolver":  {Socket, "asks the host's resolver"},
	"net.Interfaces":       {Socket, "reads the host's network interfaces"},
	"net.InterfaceAddrs":   {Socket, "reads the host's network interfaces"},
	"net.InterfaceByIndex": {Socket, "reads the host's network interfaces"},
	"net.InterfaceByName":  {Socket, "reads the host's network interfaces"},
	// crypto/tls: the dialing helpers; tls.Client and tls.Server over a
	// caller's net.Conn are the simulated path.
	"crypto/tls.Dial":               {Socket, "opens a real socket"},
	"crypto/tls.DialWithDialer":     {Socket, "opens a real socket"},
	"crypto/tls.Listen":             {Socket, "opens a real listening socket"},
	"crypto/tls.Dialer.Dial":        {Socket, "opens a real socket"},
	"crypto/tls.Dialer.DialContext": {Socket, "opens a real socket"},
	// net/http: serving on an address instead of a caller's listener.
	"net/http.ListenAndServe":           {Socket, "opens a real listening socket"},
	"net/http.ListenAndServeTLS":        {Socket, "opens a real listening socket"},
	"net/http.Server.ListenAndServe":    {Socket, "opens a real listening socket"},
	"net/http.Server.ListenAndServeTLS": {Socket, "opens a real listening socket"},
	// net/http/httptest listens on real loopback; fine in tests (see the
	// test-file policy in allow.go), not in library code.
	"net/http/httptest.NewServer":          {Socket, "opens a real loopback listening socket"},
	"net/http/httptest.NewTLSServer":       {Socket, "opens a real loopback listening socket"},
	"net/http/httptest.NewUnstartedServer": {Socket, "opens a real loopback listening socket"},
	// Other standard clients that dial by address.
	"net/smtp.Dial":        {Socket, "opens a real socket"},
	"net/smtp.SendMail":    {Socket, "opens a real socket"},
	"net/rpc.Dial":         {Socket, "opens a real socket"},
	"net/rpc.DialHTTP":     {Socket, "opens a real socket"},
	"net/rpc.DialHTTPPath": {Socket, "opens a real socket"},
	"net/rpc/jsonrpc.Dial": {Socket, "opens a real socket"},
	"log/syslog.Dial":      {Socket, "opens a real socket"},
	"log/syslog.New":       {Socket, "opens a real socket"},
	"log/syslog.NewLogger": {Socket, "opens a real socket"},
	// net/http: the package-level client and transport.
	"net/http.Get":              {HTTPDefault, "uses http.DefaultClient, which dials real sockets"},
	"net/http.Head":             {HTTPDefault, "uses http.DefaultClient, which dials real sockets"},
	"net/http.Post":             {HTTPDefault, "uses http.DefaultClient, which dials real sockets"},
	"net/http.PostForm":         {HTTPDefault, "uses http.DefaultClient, which dials real sockets"},
	"net/http.DefaultClient":    {HTTPDefault, "dials real sockets"},
	"net/http.DefaultTransport": {HTTPDefault, "dials real sockets"},
	// os: processes.
	"os.StartProcess": {Exec, "starts a real process"},
	"os.FindProcess":  {Exec, "reaches a real process"},
}

// bannedImports holds the packages whose import alone is the escape: every
// use of them is outside the simulation, so one diagnostic at the import
// says it once.
var bannedImports = map[string]banned{
	"os/exec":                  {Exec, "starts real processes"},
	"golang.org/x/sys/execabs": {Exec, "starts real processes"},
	"plugin":                   {Plugin, "loads native code at run time"},
}

// syscallPackages are the raw system call packages. Every package-level
// function (a system call or a wrapper of one) and variable (process-wide
// OS state such as syscall.Stdin or syscall.ForkLock) in them is banned under
// Syscall; constants, types and methods are not, because they do nothing
// until a function hands them to the kernel.
var syscallPackages = map[string]bool{
	"syscall":                  true,
	"golang.org/x/sys/unix":    true,
	"golang.org/x/sys/windows": true,
	"golang.org/x/sys/plan9":   true,
}

// Struct literals that fall back to a real dialer when a field is left out:
// an http.Client without Transport uses http.DefaultTransport, and an
// http.Transport without DialContext (or the older Dial) dials with a zero
// net.Dialer. Keyed by "path.Type"; the value lists the fields, any one of
// which makes the literal injectable.
var dialFields = map[string][]string{
	"net/http.Client":    {"Transport"},
	"net/http.Transport": {"DialContext", "Dial"},
}

// display turns a table key into the name a Go programmer writes:
// "net/http.Server.ListenAndServe" becomes "(http.Server).ListenAndServe".
func display(key string) string {
	slash := strings.LastIndex(key, "/")
	short := key[slash+1:]
	parts := strings.Split(short, ".")
	if len(parts) == 3 {
		return "(" + parts[0] + "." + parts[1] + ")." + parts[2]
	}
	return short
}

// Advice returns what simulated code does instead of breaking rule.
func Advice(rule Rule) string { return advice[rule] }
