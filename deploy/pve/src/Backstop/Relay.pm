package Backstop::Relay;

# Copies bytes both ways between pairs of sockets (an upgraded HTTPS
# tunnel on one side, a local NBD UNIX socket on the other) in one select
# loop. The plugin only relays: it never looks at the NBD traffic.
#
# A pair ends when either side reaches EOF (and what it sent has been
# passed on) or fails; then both sockets are closed. NBD needs no
# half-close: after the client's NBD_CMD_DISC nothing else flows.

use strict;
use warnings;

use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Socket::SSL;
use Time::HiRes qw(time);

my $MAX_BUF = 4 << 20; # per direction; bounds memory per pair
my $READ_SIZE = 256 << 10;

sub new {
    my ($class) = @_;
    return bless { pairs => [] }, $class;
}

# add($name, $tunnel, $local, $tunnel_leftover): starts relaying a pair.
sub add {
    my ($self, $name, $a, $b, $leftover) = @_;
    $_->blocking(0) for ($a, $b);
    my $p = {
        name => $name,
        a => $a, b => $b,
        a2b => $leftover // '', b2a => '',
        a_eof => 0, b_eof => 0,
        open => 1, error => undef,
        bytes_a2b => 0, bytes_b2a => 0,
        started => time(),
    };
    push @{ $self->{pairs} }, $p;
    return $p;
}

sub pairs { return @{ $_[0]->{pairs} } }

sub open_pairs { return grep { $_->{open} } @{ $_[0]->{pairs} } }

sub _is_ssl { return ref($_[0]) =~ /SSL/ }

sub _close_pair {
    my ($p, $err) = @_;
    return if !$p->{open};
    $p->{open} = 0;
    $p->{error} //= $err;
    $p->{ended} = time();
    for my $s ($p->{a}, $p->{b}) {
        next if !$s;
        if (_is_ssl($s)) {
            $s->close(SSL_fast_shutdown => 1);
        } else {
            close($s);
        }
    }
}

# close($pair, $why): ends one pair.
sub close {
    my ($self, $p, $why) = @_;
    _close_pair($p, $why);
}

sub close_all {
    my ($self, $why) = @_;
    _close_pair($_, $why) for $self->open_pairs;
}

# step($timeout, @extra_read_handles): one select round; returns the extra
# handles that are readable.
sub step {
    my ($self, $timeout, @extra) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my ($rin, $win) = ('', '');
    my %by_fd;
    my $immediate = 0;
    for my $p ($self->open_pairs) {
        for my $side (qw(a b)) {
            my $s = $p->{$side};
            my $fd = fileno($s);
            if (!defined($fd)) {
                _close_pair($p, "socket of $side closed");
                last;
            }
            my $in = $side eq 'a' ? 'a2b' : 'b2a';  # what reading this side fills
            my $out = $side eq 'a' ? 'b2a' : 'a2b'; # what writing this side drains
            my $eof = $p->{"${side}_eof"};
            if (!$eof && length($p->{$in}) < $MAX_BUF) {
                vec($rin, $fd, 1) = 1;
                $immediate = 1 if _is_ssl($s) && $s->pending;
            }
            vec($win, $fd, 1) = 1 if length($p->{$out}) || $p->{"${side}_want_write"};
            $by_fd{$fd} = [$p, $side];
        }
    }
    for my $h (@extra) {
        vec($rin, fileno($h), 1) = 1;
    }
    my ($rout, $wout) = ($rin, $win);
    my $n = select($rout, $wout, undef, $immediate ? 0 : $timeout);
    if ($n < 0) {
        return () if $! == EINTR;
        die "backstop: select failed: $!\n";
    }
    for my $fd (keys %by_fd) {
        my ($p, $side) = @{ $by_fd{$fd} };
        next if !$p->{open};
        my $s = $p->{$side};
        my $readable = vec($rout, $fd, 1) || (_is_ssl($s) && $s->pending);
        $readable = 1 if $p->{"${side}_want_write"} && vec($wout, $fd, 1);
        _do_read($p, $side) if $readable && vec($rin, $fd, 1);
        _do_write($p, $side) if $p->{open} && vec($wout, $fd, 1) && !$p->{"${side}_want_write"};
    }
    for my $p ($self->open_pairs) {
        # A side that ended: pass on what it sent, then close the pair.
        if (($p->{a_eof} && $p->{a2b} eq '') || ($p->{b_eof} && $p->{b2a} eq '')) {
            _close_pair($p, undef);
        }
    }
    return grep { vec($rout, fileno($_), 1) } @extra;
}

sub _do_read {
    my ($p, $side) = @_;
    my $s = $p->{$side};
    my $in = $side eq 'a' ? 'a2b' : 'b2a';
    delete $p->{"${side}_want_write"};
    for (1 .. 16) { # drain what TLS already decrypted, within reason
        my $n = sysread($s, $p->{$in}, $READ_SIZE, length($p->{$in}));
        if (!defined($n)) {
            return if $! == EINTR;
            if ($! == EAGAIN || $! == EWOULDBLOCK) {
                $p->{"${side}_want_write"} = 1
                    if _is_ssl($s) && $SSL_ERROR == SSL_WANT_WRITE;
                return;
            }
            my $who = $side eq 'a' ? 'tunnel' : 'local socket';
            _close_pair($p, "reading the $who failed: " . ($! || $SSL_ERROR));
            return;
        }
        if ($n == 0) {
            $p->{"${side}_eof"} = 1;
            return;
        }
        $p->{"bytes_$in"} += $n;
        return if !(_is_ssl($s) && $s->pending) || length($p->{$in}) >= $MAX_BUF;
    }
}

sub _do_write {
    my ($p, $side) = @_;
    my $s = $p->{$side};
    my $out = $side eq 'a' ? 'b2a' : 'a2b';
    while (length($p->{$out})) {
        my $n = syswrite($s, $p->{$out}, length($p->{$out}) > $READ_SIZE ? $READ_SIZE : length($p->{$out}));
        if (!defined($n)) {
            return if $! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK;
            my $who = $side eq 'a' ? 'tunnel' : 'local socket';
            _close_pair($p, "writing to the $who failed: " . ($! || $SSL_ERROR));
            return;
        }
        substr($p->{$out}, 0, $n, '');
    }
}

1;
