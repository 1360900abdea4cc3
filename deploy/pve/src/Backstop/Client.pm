package Backstop::Client;

# A small HTTP/1.1 client for the Backstop REST API (api/openapi.yaml), made
# for the PVE plugin: TLS with the server certificate pinned by its SHA-256
# fingerprint, bounded waits everywhere (a PVE storage call must never hang),
# streamed request and response bodies, and the `Connection: Upgrade` dance
# that turns a request into a raw NBD tunnel.
#
# Only modules a PVE node has: core Perl, IO::Socket::SSL, JSON.
# One connection per request: calls are few and short, and a fresh
# connection can never be left half-read by an earlier error.

use strict;
use warnings;

use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Select;
use IO::Socket::IP;
use IO::Socket::SSL;
use JSON ();
use Socket qw(SOL_SOCKET SO_RCVTIMEO SO_SNDTIMEO IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(time);

our $VERSION = '0.1';
my $USER_AGENT = "backstop-pve/$VERSION";

# new(%opts): host, port, token, fingerprint (sha256, "AA:BB:…" or plain hex;
# undef = verify against the system CAs and the host name), tls (default 1),
# connect_timeout (s), timeout (s, idle time of one read or write), ns.
sub new {
    my ($class, %opts) = @_;
    die "backstop: no server configured\n" if !defined($opts{host}) || $opts{host} eq '';
    my $self = bless {
        host => $opts{host},
        port => $opts{port} // 8280,
        token => $opts{token},
        fingerprint => normalize_fingerprint($opts{fingerprint}),
        tls => $opts{tls} // 1,
        connect_timeout => $opts{connect_timeout} // 10,
        timeout => $opts{timeout} // 60,
    }, $class;
    return $self;
}

sub normalize_fingerprint {
    my ($fp) = @_;
    return undef if !defined($fp) || $fp eq '';
    (my $hex = lc($fp)) =~ s/^sha256\$//;
    $hex =~ s/://g;
    die "backstop: fingerprint '$fp' is not a SHA-256 fingerprint (64 hex digits)\n"
        if $hex !~ /^[0-9a-f]{64}$/;
    return $hex;
}

# The server as people write it, for messages.
sub url {
    my ($self) = @_;
    my $host = $self->{host} =~ /:/ ? "[$self->{host}]" : $self->{host};
    return ($self->{tls} ? 'https' : 'http') . "://$host:$self->{port}";
}

# with(%overrides) returns a copy with other timeouts (e.g. for status).
sub with {
    my ($self, %over) = @_;
    return bless { %$self, %over }, ref($self);
}

sub _connect {
    my ($self, $timeout) = @_;
    $timeout //= $self->{connect_timeout};
    my $where = $self->url;
    my $sock = IO::Socket::IP->new(
        PeerHost => $self->{host},
        PeerPort => $self->{port},
        Proto => 'tcp',
        Timeout => $timeout,
    ) or die "backstop: cannot connect to $where: " . ($@ || $!) . "\n";
    setsockopt($sock, IPPROTO_TCP, TCP_NODELAY, 1);
    return $sock if !$self->{tls};

    my %ssl = (
        SSL_startHandshake => 1,
        Timeout => $timeout,
        SSL_verify_mode => SSL_VERIFY_PEER,
    );
    my $mismatch;
    if (my $want = $self->{fingerprint}) {
        # Pinning: the leaf certificate must have exactly this fingerprint;
        # CA chain and host name do not matter (PBS does the same).
        $ssl{SSL_verifycn_scheme} = 'none';
        $ssl{SSL_verify_callback} = sub {
            my ($ok, $store, $certname, $error, $cert, $depth) = @_;
            return 1 if $depth > 0;
            my $got = lc(Net::SSLeay::X509_get_fingerprint($cert, 'sha256') // '');
            $got =~ s/://g;
            return 1 if $got eq $want;
            $mismatch = $got;
            return 0;
        };
    } else {
        $ssl{SSL_verifycn_scheme} = 'http';
        $ssl{SSL_verifycn_name} = $self->{host};
    }
    $ssl{SSL_hostname} = $self->{host} if $self->{host} !~ /^[\d.]+$|:/;
    if (!IO::Socket::SSL->start_SSL($sock, %ssl)) {
        my $err = $SSL_ERROR || $! || 'unknown error';
        close($sock);
        if (defined($mismatch)) {
            my $pretty = join(':', map { uc } unpack('(A2)*', $mismatch));
            die "backstop: TLS certificate of $where does not match the configured fingerprint"
                . " (server presented $pretty)\n";
        }
        die "backstop: TLS handshake with $where failed: $err"
            . ($self->{fingerprint} ? "\n" : " (set the storage's fingerprint option to pin a self-signed certificate)\n");
    }
    return $sock;
}

# Idle timeouts for blocking reads and writes, so that no call can hang.
sub _set_io_timeout {
    my ($sock, $secs) = @_;
    my $tv = pack('l!l!', int($secs), int(($secs - int($secs)) * 1e6));
    setsockopt($sock, SOL_SOCKET, SO_RCVTIMEO, $tv);
    setsockopt($sock, SOL_SOCKET, SO_SNDTIMEO, $tv);
}

sub _write_all {
    my ($self, $sock, $data) = @_;
    my $off = 0;
    my $len = length($data);
    while ($off < $len) {
        my $n = syswrite($sock, $data, $len - $off, $off);
        if (!defined($n)) {
            next if $! == EINTR;
            my $err = ($! == EAGAIN || $! == EWOULDBLOCK) ? 'timed out' : ($! || $SSL_ERROR);
            die "backstop: sending to " . $self->url . " failed: $err\n";
        }
        $off += $n;
    }
}

# Buffered reader over a socket; _read_more appends to $$buf.
sub _read_more {
    my ($self, $sock, $buf, $deadline) = @_;
    while (1) {
        if (!(ref($sock) =~ /SSL/ && $sock->pending)) {
            my $left = $deadline - time();
            die "backstop: " . $self->url . " did not answer within $self->{timeout}s\n" if $left <= 0;
            my $sel = IO::Select->new($sock);
            next if !$sel->can_read($left > 1 ? 1 : $left); # re-check the deadline
        }
        my $n = sysread($sock, $$buf, 262144, length($$buf));
        if (!defined($n)) {
            next if $! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK;
            die "backstop: reading from " . $self->url . " failed: " . ($! || $SSL_ERROR) . "\n";
        }
        return $n;
    }
}

sub _read_line {
    my ($self, $sock, $buf, $deadline) = @_;
    while (1) {
        my $i = index($$buf, "\n");
        if ($i >= 0) {
            my $line = substr($$buf, 0, $i + 1, '');
            $line =~ s/\r?\n$//;
            return $line;
        }
        die "backstop: header line too long from " . $self->url . "\n" if length($$buf) > 65536;
        $self->_read_more($sock, $buf, $deadline)
            or die "backstop: " . $self->url . " closed the connection before answering\n";
    }
}

sub _read_head {
    my ($self, $sock, $buf, $deadline) = @_;
    my $status_line = $self->_read_line($sock, $buf, $deadline);
    my ($code, $reason) = $status_line =~ m{^HTTP/1\.[01] (\d{3}) ?(.*)$}
        or die "backstop: " . $self->url . " does not speak HTTP (got '"
        . substr($status_line, 0, 60) . "')\n";
    my %h;
    while (1) {
        my $line = $self->_read_line($sock, $buf, $deadline);
        last if $line eq '';
        my ($k, $v) = $line =~ /^([^:]+):\s*(.*?)\s*$/ or next;
        $k = lc($k);
        $h{$k} = exists($h{$k}) ? "$h{$k}, $v" : $v;
    }
    return ($code, $reason, \%h);
}

sub _query_string {
    my ($query) = @_;
    return '' if !$query || !%$query;
    my @p;
    for my $k (sort keys %$query) {
        next if !defined($query->{$k});
        push @p, _uri_escape($k) . '=' . _uri_escape($query->{$k});
    }
    return @p ? '?' . join('&', @p) : '';
}

sub _uri_escape {
    my ($s) = @_;
    utf8::encode($s) if utf8::is_utf8($s);
    $s =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord($1))/ge;
    return $s;
}

# Escapes one path segment (snapshot names, devices, ids are plain anyway).
sub seg { return _uri_escape($_[0]) }

sub _head_lines {
    my ($self, $method, $path, $headers) = @_;
    my $host = $self->{host} =~ /:/ ? "[$self->{host}]" : $self->{host};
    my $req = "$method $path HTTP/1.1\r\nHost: $host:$self->{port}\r\nUser-Agent: $USER_AGENT\r\n";
    $req .= "Authorization: Bearer $self->{token}\r\n" if defined($self->{token});
    for my $k (sort keys %$headers) {
        $req .= "$k: $headers->{$k}\r\n";
    }
    return $req;
}

# request($method, $path, %opts) sends one request and returns
# { status, reason, headers, content }. Options:
#   query => {k => v}     json => $ref      body => $bytes, type => $ctype
#   body_cb => sub { return $bytes or '' at the end } (chunked upload with
#       Expect: 100-continue, so a refusal arrives before anything is sent)
#   save_fh => $fh (response body written there when the status is 2xx)
#   on_data => sub { $bytes_so_far } (progress while saving)
#   timeout => idle seconds
# Dies only when the server cannot be reached or the exchange breaks; HTTP
# error statuses are returned.
sub request {
    my ($self, $method, $path, %opts) = @_;
    my $timeout = $opts{timeout} // $self->{timeout};
    $path .= _query_string($opts{query});
    my %h = (Connection => 'close');
    my $body;
    if (exists($opts{json})) {
        $body = JSON->new->utf8->canonical->encode($opts{json});
        $h{'Content-Type'} = 'application/json';
    } elsif (defined($opts{body})) {
        $body = $opts{body};
        utf8::encode($body) if utf8::is_utf8($body);
        $h{'Content-Type'} = $opts{type} // 'application/octet-stream';
    }
    if ($opts{body_cb}) {
        $h{'Content-Type'} = $opts{type} // 'application/octet-stream';
        $h{'Transfer-Encoding'} = 'chunked';
        $h{Expect} = '100-continue';
    } elsif (defined($body)) {
        $h{'Content-Length'} = length($body);
    } elsif ($method =~ /^(POST|PUT|PATCH)$/) {
        $h{'Content-Length'} = 0;
    }
    $h{Accept} = $opts{accept} if $opts{accept};

    my $sock = $self->_connect($opts{connect_timeout});
    _set_io_timeout($sock, $timeout);
    local $SIG{PIPE} = 'IGNORE';
    my $buf = '';
    my $res = eval {
        $self->_write_all($sock, $self->_head_lines($method, $path, \%h) . "\r\n");
        $self->_write_all($sock, $body) if defined($body) && !$opts{body_cb};
        my ($code, $reason, $hdr);
        if (my $cb = $opts{body_cb}) {
            # Wait (briefly) for 100 Continue or an early final answer.
            my $sel = IO::Select->new($sock);
            if ($sock->can('pending') && $sock->pending || $sel->can_read(5)) {
                ($code, $reason, $hdr) = $self->_read_head($sock, \$buf, time() + $timeout);
            }
            if (!defined($code) || $code == 100) {
                undef $code;
                my $sent_err = eval { $self->_send_chunks($sock, $cb); 1 } ? undef : $@;
                if ($sent_err) {
                    # The server may have answered and closed: prefer its word.
                    my ($c2, $r2, $h2) = eval { $self->_read_head($sock, \$buf, time() + 5) };
                    die $sent_err if !defined($c2);
                    ($code, $reason, $hdr) = ($c2, $r2, $h2);
                }
            }
        }
        if (!defined($code)) {
            my $deadline = time() + $timeout;
            do {
                ($code, $reason, $hdr) = $self->_read_head($sock, \$buf, $deadline);
            } while ($code == 100);
        }
        my $res = { status => $code, reason => $reason, headers => $hdr };
        if ($method ne 'HEAD' && $code != 204 && $code != 304) {
            my $sink_fh = ($opts{save_fh} && $code >= 200 && $code < 300) ? $opts{save_fh} : undef;
            my $content = '';
            $self->_read_body($sock, \$buf, $hdr, $sink_fh, \$content, $opts{on_data}, $timeout);
            $res->{content} = $content;
        }
        $res;
    };
    my $err = $@;
    if (ref($sock) =~ /SSL/) {
        $sock->close(SSL_fast_shutdown => 1);
    } else {
        close($sock);
    }
    die $err if $err;
    return $res;
}

sub _send_chunks {
    my ($self, $sock, $cb) = @_;
    my $sel = IO::Select->new($sock);
    while (1) {
        # An answer before the end of the upload is a refusal: stop sending.
        return if (ref($sock) =~ /SSL/ && $sock->pending) || $sel->can_read(0);
        my $data = $cb->();
        if (!defined($data)) {
            # The producer failed: end the connection without the last chunk,
            # so the server sees a truncated upload, never a complete one.
            die "backstop: upload aborted\n";
        }
        if ($data eq '') {
            $self->_write_all($sock, "0\r\n\r\n");
            return;
        }
        $self->_write_all($sock, sprintf("%x\r\n", length($data)) . $data . "\r\n");
    }
}

sub _read_body {
    my ($self, $sock, $buf, $hdr, $fh, $content, $on_data, $timeout) = @_;
    my $total = 0;
    my $emit = sub {
        my ($data) = @_;
        return if $data eq '';
        $total += length($data);
        if ($fh) {
            print {$fh} $data or die "backstop: writing download failed: $!\n";
            $on_data->($total) if $on_data;
        } else {
            $$content .= $data;
            die "backstop: answer from " . $self->url . " is too large\n" if length($$content) > 256 << 20;
        }
    };
    my $more = sub { $self->_read_more($sock, $buf, time() + $timeout) };
    if (lc($hdr->{'transfer-encoding'} // '') =~ /chunked/) {
        while (1) {
            my $line = $self->_read_line($sock, $buf, time() + $timeout);
            my ($len) = $line =~ /^([0-9a-fA-F]+)/
                or die "backstop: bad chunk header from " . $self->url . "\n";
            $len = hex($len);
            if ($len == 0) {
                while ($self->_read_line($sock, $buf, time() + $timeout) ne '') { }
                return $total;
            }
            while (length($$buf) < $len + 2) {
                $more->() or die "backstop: " . $self->url . " closed the connection mid-answer\n";
            }
            $emit->(substr($$buf, 0, $len, ''));
            substr($$buf, 0, 2, '');
        }
    } elsif (defined(my $len = $hdr->{'content-length'})) {
        die "backstop: bad Content-Length from " . $self->url . "\n" if $len !~ /^\d+$/;
        my $left = $len;
        while ($left > 0) {
            if ($$buf eq '') {
                $more->() or die "backstop: " . $self->url . " closed the connection after "
                    . ($len - $left) . " of $len bytes\n";
            }
            my $take = length($$buf) < $left ? length($$buf) : $left;
            $emit->(substr($$buf, 0, $take, ''));
            $left -= $take;
        }
    } else {
        while (1) {
            $emit->($$buf) if $$buf ne '';
            $$buf = '';
            $more->() or last;
        }
    }
    return $total;
}

# Error text of a failed answer: the problem+json detail when there is one.
sub problem_text {
    my ($res) = @_;
    my $text = "$res->{status} $res->{reason}";
    my $c = $res->{content} // '';
    if (($res->{headers}->{'content-type'} // '') =~ /json/) {
        my $p = eval { JSON::decode_json($c) };
        if (ref($p) eq 'HASH') {
            $text .= " ($p->{code})" if $p->{code};
            $text .= ": $p->{detail}" if defined($p->{detail}) && $p->{detail} ne '';
            return $text;
        }
    }
    $c =~ s/\s+/ /g;
    $text .= ": " . substr($c, 0, 300) if $c ne '';
    return $text;
}

# call($method, $path, %opts): request() that dies with the server's reason
# on any status but 2xx (or those listed in ok => [...]), and decodes JSON.
sub call {
    my ($self, $method, $path, %opts) = @_;
    my $ok = { map { $_ => 1 } @{ delete($opts{ok}) // [] } };
    my $res = $self->request($method, $path, %opts);
    if (($res->{status} < 200 || $res->{status} > 299) && !$ok->{ $res->{status} }) {
        my $what = delete($opts{what}) // "$method $path";
        my $err = "backstop: $what: server " . $self->url . " answered " . problem_text($res) . "\n";
        die Backstop::Client::Error->new($err, $res->{status});
    }
    if (($res->{headers}->{'content-type'} // '') =~ m{^application/(problem\+)?json}
        && defined($res->{content}) && $res->{content} ne '') {
        $res->{data} = JSON::decode_json($res->{content});
    }
    return wantarray ? ($res->{data}, $res) : $res->{data};
}

# upgrade($path): GET with Connection: Upgrade / Upgrade: nbd. On 101 returns
# ($socket, $leftover_bytes); the socket then carries the raw protocol.
# Otherwise dies with the server's reason (an Error with ->status).
sub upgrade {
    my ($self, $path, %opts) = @_;
    my $sock = $self->_connect();
    my $timeout = $opts{timeout} // 30;
    _set_io_timeout($sock, $timeout);
    local $SIG{PIPE} = 'IGNORE';
    my $buf = '';
    my ($code, $reason, $hdr) = eval {
        $self->_write_all($sock, $self->_head_lines('GET', $path,
            { Connection => 'Upgrade', Upgrade => 'nbd' }) . "\r\n");
        $self->_read_head($sock, \$buf, time() + $timeout);
    };
    if (my $err = $@) {
        close($sock);
        die $err;
    }
    if ($code != 101) {
        my $res = { status => $code, reason => $reason, headers => $hdr, content => '' };
        eval { $self->_read_body($sock, \$buf, $hdr, undef, \$res->{content}, undef, 5) };
        close($sock);
        die Backstop::Client::Error->new("backstop: opening the NBD tunnel $path: server "
            . $self->url . " answered " . problem_text($res) . "\n", $code);
    }
    _set_io_timeout($sock, 0);
    return ($sock, $buf);
}

package Backstop::Client::Error;

# A die value that prints as its message and carries the HTTP status.
use overload '""' => sub { $_[0]->{message} }, fallback => 1;

sub new {
    my ($class, $message, $status) = @_;
    return bless { message => $message, status => $status }, $class;
}

sub status { $_[0]->{status} }

1;
