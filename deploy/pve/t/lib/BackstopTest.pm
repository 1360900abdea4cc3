package BackstopTest;

# Test harness for the PVE plugin: a real Backstop server (built from this
# repository, HTTPS with a throwaway self-signed certificate, a fresh
# Postgres database, a file:// chunk store in a temporary directory), the
# QEMU tools that stand in for QEMU's backup access, and helpers shared by
# the .t files. Everything binds 127.0.0.1 and every process is stopped by
# its PID.

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::SHA;
use Exporter 'import';
use File::Basename qw(dirname);
use File::Path qw(make_path remove_tree);
use File::Temp ();
use IO::Socket::INET;
use POSIX ();
use Socket;
use Test::More;
use Time::HiRes qw(time sleep);

use Backstop::Client;

our @EXPORT = qw(
    require_peers start_server tmpdir run_cmd run_out file_sha raw_sha zero_sha free_port
    pve_storage capture_log log_text endpoint_pending run_in_userns qemu_nbd rand_hex
);

our $REPO = abs_path(dirname(__FILE__) . '/../../../..');

my @CLEANUP; # subs run at exit, last first

END {
    my $rc = $?;
    $_->() for reverse @CLEANUP;
    @CLEANUP = ();
    $? = $rc;
}

sub rand_hex {
    my ($n) = @_;
    open(my $fh, '<', '/dev/urandom') or die;
    read($fh, my $b, $n);
    close($fh);
    return unpack('H*', $b);
}

sub tmpdir {
    my $d = File::Temp::tempdir('backstop-pl-XXXXXXXX', TMPDIR => 1, CLEANUP => 0);
    push @CLEANUP, sub { system('umount', '-l', $_) for _mounts_under($d); remove_tree($d) };
    return $d;
}

sub _mounts_under {
    my ($d) = @_;
    open(my $m, '<', '/proc/self/mounts') or return ();
    my @r = grep { index($_, "$d/") == 0 } map { (split(' ', $_))[1] } <$m>;
    close($m);
    return @r;
}

sub _required {
    my ($peer) = @_;
    return (($ENV{BACKSTOP_TEST_REQUIRE} // '') =~ /(^|,)\s*\Q$peer\E\s*(,|$)/);
}

# require_peers('pg', 'qemu'): skip_all with the reason when a peer is
# missing, or fail when BACKSTOP_TEST_REQUIRE names it.
sub require_peers {
    my @missing;
    for my $peer (@_) {
        my $why;
        if ($peer eq 'pg') {
            # With the embedded catalog the server needs no Postgres.
            if (!embedded_catalog()) {
                $why = 'BACKSTOP_TEST_PG_DSN is not set (a Postgres the tests may create databases on)'
                    if !$ENV{BACKSTOP_TEST_PG_DSN};
                $why //= 'psql is not installed' if !_which('psql');
            }
            $why //= 'go is not installed (needed to build the server)'
                if !$ENV{BACKSTOP_PL_SERVER_BIN} && !_which('go');
            $why //= 'openssl is not installed' if !_which('openssl');
        } elsif ($peer eq 'qemu') {
            my @t = grep { !_which($_) } qw(qemu-img qemu-nbd qemu-io nbdfuse fusermount3);
            $why = "missing QEMU/NBD tools: @t" if @t;
        }
        next if !$why;
        if (_required($peer)) {
            plan tests => 1;
            fail("peer '$peer' is required (BACKSTOP_TEST_REQUIRE) but unavailable: $why");
            exit 1;
        }
        push @missing, $why;
    }
    plan skip_all => join('; ', @missing) if @missing;
}

sub _which {
    my ($cmd) = @_;
    for my $d (split(/:/, $ENV{PATH} // '/usr/bin:/bin')) {
        return "$d/$cmd" if -x "$d/$cmd";
    }
    return undef;
}

sub run_cmd {
    my (@cmd) = @_;
    my $out = run_out(@cmd);
    return $out;
}

# run_out(@cmd) runs a command, dies with its output when it fails.
sub run_out {
    my (@cmd) = @_;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open(STDERR, '>&', \*STDOUT);
        exec(@cmd) or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh> // '';
    close($fh);
    die "command failed (" . ($? >> 8) . "): @cmd\n$out" if $?;
    return $out;
}

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1, ReuseAddr => 1)
        or die "free port: $!";
    my $p = $s->sockport;
    close($s);
    return $p;
}

sub file_sha {
    my ($path) = @_;
    my $d = Digest::SHA->new(256);
    $d->addfile($path, 'b');
    return $d->hexdigest;
}

# raw_sha($image): SHA-256 of the image as raw bytes (qemu-img convert).
sub raw_sha {
    my ($img, $fmt) = @_;
    my $dir = tmpdir();
    run_out('qemu-img', 'convert', '-f', $fmt // 'qcow2', '-O', 'raw', $img, "$dir/out.raw");
    my $sha = file_sha("$dir/out.raw");
    remove_tree($dir);
    return $sha;
}

sub zero_sha {
    my ($n) = @_;
    my $d = Digest::SHA->new(256);
    my $block = "\0" x (1 << 20);
    while ($n > 0) {
        my $k = $n < length($block) ? $n : length($block);
        $d->add(substr($block, 0, $k));
        $n -= $k;
    }
    return $d->hexdigest;
}

# embedded_catalog(): BACKSTOP_TEST_CATALOG=sqlite runs the servers on the
# embedded catalog (in their data directory) instead of a Postgres database.
sub embedded_catalog {
    my $c = $ENV{BACKSTOP_TEST_CATALOG} // 'postgres';
    die "BACKSTOP_TEST_CATALOG=$c: want postgres or sqlite\n" if $c ne 'postgres' && $c ne 'sqlite';
    return $c eq 'sqlite';
}

sub _psql {
    my ($dsn, $sql) = @_;
    run_out('psql', $dsn, '-v', 'ON_ERROR_STOP=1', '-qAtc', $sql);
}

sub _server_bin {
    return $ENV{BACKSTOP_PL_SERVER_BIN} if $ENV{BACKSTOP_PL_SERVER_BIN};
    my $dir = tmpdir();
    note("building the server (go build ./cmd/server)");
    my $pid = fork() // die;
    if (!$pid) {
        chdir($REPO) or POSIX::_exit(1);
        exec('go', 'build', '-o', "$dir/server", './cmd/server') or POSIX::_exit(127);
    }
    waitpid($pid, 0);
    die "go build ./cmd/server failed\n" if $?;
    return "$dir/server";
}

# start_server(): a running server; returns a hash with host, port,
# fingerprint, admin_token, token (role backup), dir, stop.
sub start_server {
    my (%o) = @_;
    my $dir = tmpdir();
    my $bin = _server_bin();
    my ($base, $db, $dbdsn);
    if (!embedded_catalog()) {
        $base = $ENV{BACKSTOP_TEST_PG_DSN};
        $db = 'backstop_pl_' . rand_hex(6);
        _psql($base, "CREATE DATABASE $db");
        $dbdsn = $base;
        $dbdsn =~ s{^(postgres(?:ql)?://[^/]*)/?[^?]*}{$1/$db} or die "cannot parse BACKSTOP_TEST_PG_DSN\n";
    }

    run_out('openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
        '-keyout', "$dir/key.pem", '-out', "$dir/cert.pem", '-days', '2', '-subj', '/CN=backstop-test',
        '-addext', 'subjectAltName=IP:127.0.0.1');
    my $fp = run_out('openssl', 'x509', '-noout', '-fingerprint', '-sha256', '-in', "$dir/cert.pem");
    ($fp) = $fp =~ /=\s*([0-9A-F:]+)/ or die "no fingerprint";

    my $srv = {
        host => '127.0.0.1', port => free_port(), nbd_port => free_port(), fingerprint => $fp,
        admin_token => rand_hex(16), dir => $dir, db => $db, base_dsn => $base, log => "$dir/server.log",
    };
    make_path("$dir/chunks");
    my %env = (
        BACKSTOP_LISTEN => "127.0.0.1:$srv->{port}",
        BACKSTOP_NBD_LISTEN => "127.0.0.1:$srv->{nbd_port}",
        BACKSTOP_NBD_ADVERTISE => "127.0.0.1:$srv->{nbd_port}",
        ($db ? (BACKSTOP_DATABASE_URL => $dbdsn) : (BACKSTOP_DATA_DIR => "$dir/data")),
        BACKSTOP_STORE => "file://$dir/chunks",
        BACKSTOP_ADMIN_TOKEN => $srv->{admin_token},
        BACKSTOP_TLS_CERT => "$dir/cert.pem",
        BACKSTOP_TLS_KEY => "$dir/key.pem",
        BACKSTOP_LOG_LEVEL => 'info',
    );
    my $pid = fork() // die "fork: $!";
    if (!$pid) {
        delete $ENV{BACKSTOP_DATABASE_URL};
        $ENV{$_} = $env{$_} for keys %env;
        open(STDIN, '<', '/dev/null');
        open(STDOUT, '>', $srv->{log});
        open(STDERR, '>&', \*STDOUT);
        exec($bin, 'serve') or POSIX::_exit(127);
    }
    $srv->{pid} = $pid;
    my $stopped = 0;
    $srv->{stop} = sub {
        return if $stopped++;
        kill('TERM', $pid);
        my $t = time() + 15;
        while (time() < $t) {
            last if waitpid($pid, POSIX::WNOHANG()) != 0;
            sleep(0.05);
        }
        if (kill(0, $pid)) {
            kill('KILL', $pid);
            waitpid($pid, 0);
        }
    };
    push @CLEANUP, sub {
        $srv->{stop}->();
        if ($db) {
            eval { _psql($base, "DROP DATABASE IF EXISTS $db WITH (FORCE)") };
            diag("drop database $db: $@") if $@;
        }
    };

    my $admin = client($srv, $srv->{admin_token});
    my $deadline = time() + 60;
    while (1) {
        my $res = eval { $admin->with(connect_timeout => 1, timeout => 2)->request('GET', '/readyz') };
        last if $res && $res->{status} == 200;
        if (waitpid($pid, POSIX::WNOHANG()) == $pid || time() > $deadline) {
            my $log = do { local (@ARGV, $/) = ($srv->{log}); <> } // '';
            die "the server did not become ready:\n$log";
        }
        sleep(0.1);
    }
    my $tok = $admin->call('POST', '/api/v1/tokens', json => { name => 'pve-plugin-test', role => 'backup' });
    $srv->{token} = $tok->{token};
    return $srv;
}

sub client {
    my ($srv, $token) = @_;
    return Backstop::Client->new(host => $srv->{host}, port => $srv->{port},
        fingerprint => $srv->{fingerprint}, token => $token // $srv->{token});
}

# pve_storage($srv, %over): a configured `backstop` storage as PVE would
# have it (token written by on_add_hook into a private priv dir); returns
# ($plugin_class, $scfg, $storeid).
sub pve_storage {
    my ($srv, %over) = @_;
    require PVE::Storage::Custom::BackstopPlugin;
    my $root = tmpdir();
    no warnings 'once';
    $PVE::Storage::Custom::BackstopPlugin::PRIV_DIR = "$root/etc/pve/priv/storage";
    $PVE::Storage::Custom::BackstopPlugin::RUN_DIR = "$root/run/backstop";
    $PVE::BackupProvider::Plugin::Backstop::TMP_DIR = "$root/var/tmp";
    my $storeid = delete($over{storeid}) // 'backstop';
    my $token = exists($over{token}) ? delete($over{token}) : $srv->{token};
    my $scfg = {
        type => 'backstop',
        server => $srv->{host},
        port => $srv->{port},
        fingerprint => $srv->{fingerprint},
        content => { backup => 1 },
        %over,
    };
    my $plugin = 'PVE::Storage::Custom::BackstopPlugin';
    $plugin->on_add_hook($storeid, $scfg, token => $token);
    return ($plugin, $scfg, $storeid, $root);
}

# capture_log($file): a PVE-style $log_function writing "level: msg" lines
# to a file (so lines written in forked children are kept too).
sub capture_log {
    my ($file) = @_;
    open(my $fh, '>>', $file) or die "$file: $!";
    $fh->autoflush(1);
    return sub {
        my ($level, $msg) = @_;
        print {$fh} "$level: $msg\n";
        note("$level: $msg") if $ENV{TEST_VERBOSE};
    };
}

sub log_text {
    my ($file) = @_;
    open(my $fh, '<', $file) or return '';
    local $/;
    my $t = <$fh> // '';
    close($fh);
    return $t;
}

# endpoint_pending($error): the server answered 501 (an endpoint another
# issue is still implementing).
sub endpoint_pending {
    my ($err) = @_;
    return defined($err) && "$err" =~ /\b501\b.*not_implemented|not_implemented.*\b501\b/s;
}

# run_in_userns($code, $idmap): what pve-container does for backup_container
# (PVE::LXC::Namespaces::run_in_userns): fork, unshare(CLONE_NEWUSER |
# CLONE_NEWNS), the parent writes the child's uid/gid maps, the child
# becomes root in the namespace and runs $code. $idmap is [[ct, host,
# count], …]; [[0, $<, 1]] is `unshare --user --map-root-user`. Returns the
# child's error text, or undef when $code succeeded.
sub run_in_userns {
    my ($code, $idmap) = @_;
    require 'syscall.ph';
    socketpair(my $p, my $c, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die "socketpair: $!";
    pipe(my $er, my $ew) or die "pipe: $!";
    my $pid = fork() // die "fork: $!";
    if (!$pid) {
        close($p);
        close($er);
        my $ok = eval {
            syscall(&SYS_unshare, 0x10000000 | 0x00020000) == 0 # CLONE_NEWUSER | CLONE_NEWNS
                or die "unshare(CLONE_NEWUSER|CLONE_NEWNS): $!\n";
            syswrite($c, "1\n");
            my $go = <$c>;
            die "no id map\n" if !defined($go) || $go ne "2\n";
            $! = 0;
            ($(, $)) = (0, '0 0');
            die "setgid(0): $!\n" if $!;
            ($<, $>) = (0, 0);
            die "setuid(0): $!\n" if $!;
            $code->();
            1;
        };
        if (!$ok) {
            syswrite($ew, "$@");
            POSIX::_exit(1);
        }
        POSIX::_exit(0);
    }
    close($c);
    close($ew);
    my $one = <$p>;
    die "user namespace child did not start\n" if !defined($one) || $one ne "1\n";
    my $map = join('', map { "$_->[0] $_->[1] $_->[2]\n" } @$idmap);
    for my $f ('uid_map', 'gid_map') {
        open(my $fh, '>', "/proc/$pid/$f") or die "open /proc/$pid/$f: $!";
        print {$fh} $map;
        close($fh) or die "write /proc/$pid/$f: $!";
    }
    syswrite($p, "2\n");
    close($p);
    local $/;
    my $err = <$er> // '';
    close($er);
    waitpid($pid, 0);
    return undef if $? == 0 && $err eq '';
    return $err ne '' ? $err : "child exited with status " . ($? >> 8);
}

# qemu_nbd($image, $export, %o): serves a qcow2 image on a UNIX socket as
# QEMU's backup access does (export name = device, dirty bitmap as a meta
# context, writable so that TRIM works); stopped by PID.
sub qemu_nbd {
    my ($img, $export, %o) = @_;
    my $dir = $o{dir} // tmpdir();
    my $sock = "$dir/$export.sock";
    my $pidfile = "$dir/$export.pid";
    my @args = ('--fork', "--pid-file=$pidfile", '--persistent', '--shared=8', '-f', 'qcow2',
        '-x', $export, '-k', $sock);
    push @args, '-B', $o{bitmap} if $o{bitmap};
    push @args, $o{writable} ? ('--discard=unmap') : ('--read-only');
    run_out('qemu-nbd', @args, $img);
    my $pid = do { local (@ARGV) = ($pidfile); my $l = <>; chomp($l); $l };
    my $stopped = 0;
    my $stop = sub {
        return if $stopped++;
        kill('TERM', $pid);
        for (1 .. 200) {
            last if !kill(0, $pid);
            sleep(0.05);
        }
        kill('KILL', $pid) if kill(0, $pid);
    };
    push @CLEANUP, $stop;
    return { sock => $sock, pid => $pid, stop => $stop };
}

1;
