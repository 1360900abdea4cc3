package PVE::BackupProvider::Plugin::Backstop;

# The Backstop backup provider for Proxmox VE (vzdump, qmrestore, pct
# restore). Each method is one or a few calls of the Backstop REST API
# (api/openapi.yaml). The only data it touches it relays:
#
# - VM backup (mechanism nbd): the server pulls each disk over NBD. QEMU's
#   export is a root-only UNIX socket on this node, so the provider opens
#   an upgraded HTTPS connection per disk (GET …/disks/{device}/tunnel,
#   Upgrade: nbd) and copies bytes between it and the socket.
# - Container backup (mechanism directory): GNU tar with PVE's flags,
#   streamed as the body of PUT …/archive.
# - VM restore (mechanism qemu-img): an NBD export of the disk on the
#   server, mounted with nbdfuse as a plain file (through the same kind of
#   tunnel, on a local socket).
# - Container restore (mechanism tar): the archive downloaded to a private
#   temporary directory as .tar.zst.
#
# The call sequences and quirks this follows are in the design notes
# (pve-integration.md, sections 2 and 7).

use strict;
use warnings;

use Errno qw(EINTR);
use Fcntl qw(F_GETFD F_SETFD FD_CLOEXEC);
use File::Path qw(make_path remove_tree);
use File::Temp ();
use IO::Select;
use IO::Socket::UNIX;
use JSON ();
use POSIX qw(WNOHANG);
use Socket qw(SOCK_STREAM);
use Sys::Hostname ();
use Time::HiRes qw(time sleep);

use PVE::BackupProvider::Plugin::Base;
use Backstop::Client;
use Backstop::Relay;

use base qw(PVE::BackupProvider::Plugin::Base);

# Where restores keep their temporary files; tests point these elsewhere.
our $TMP_DIR = '/var/tmp';   # container archives: may be large, not tmpfs
our $PROGRESS_INTERVAL = 10; # seconds between progress lines in the task log
our $MAX_PARALLEL_DISKS = 4; # disk pulls of one VM at a time (1 with a bandwidth limit)
our $NBDFUSE = 'nbdfuse';
our $TAR = 'tar';

# PVE's tar flags (PVE::Storage::Plugin::COMMON_TAR_FLAGS), used when the
# running PVE does not export them.
my @FALLBACK_TAR_FLAGS = qw(
    --one-file-system
    -p --sparse --numeric-owner --acls
    --xattrs --xattrs-include=user.* --xattrs-include=security.capability
    --warning=no-file-ignored --warning=no-xattr-write
);

sub new {
    my ($class, $storage_plugin, $scfg, $storeid, $log_function) = @_;
    # Read as root, now: backup_container runs later in a user namespace
    # that cannot read /etc/pve/priv, in a fork that keeps this object.
    my $client = PVE::Storage::Custom::BackstopPlugin::client($scfg, $storeid);
    my $self = bless {
        storage_plugin => $storage_plugin,
        scfg => $scfg,
        storeid => $storeid,
        log_function => $log_function,
        client => $client,
        ns => PVE::Storage::Custom::BackstopPlugin::namespace($scfg),
        guests => {},
        vm_restores => {},
        ct_restores => {},
    }, $class;
    return $self;
}

sub provider_name { return 'Backstop' }

sub _log {
    my ($self, $level, $msg) = @_;
    chomp($msg);
    if (my $f = $self->{log_function}) {
        $f->($level, $msg);
    } else {
        print STDERR uc($level) . ": $msg\n";
    }
}

sub _api { return $_[0]->{client} }

sub _node {
    my $name = eval { PVE::INotify::nodename() };
    return $name if defined($name) && $name ne '';
    ($name) = split(/\./, Sys::Hostname::hostname());
    return $name;
}

sub _guest {
    my ($self, $vmid) = @_;
    my $g = $self->{guests}->{$vmid}
        or die "backstop: no backup session for guest $vmid (backup_init was not called)\n";
    return $g;
}

sub _snapshot_name {
    my ($volname) = @_;
    my ($name) = $volname =~ m!^(?:[^:/]+:)?backup/([^/]+)$!
        or die "backstop: '$volname' is not a backstop backup volume\n";
    my ($type) = PVE::Storage::Custom::BackstopPlugin::parse_snapshot_name($name)
        or die "backstop: '$volname' is not a backstop backup volume\n";
    return ($name, $type);
}

sub _snapshot_path {
    my ($self, $name, @rest) = @_;
    return join('/', '/api/v1/snapshots', Backstop::Client::seg($name), map { Backstop::Client::seg($_) } @rest);
}

sub _human {
    my ($n) = @_;
    my @u = ('B', 'KiB', 'MiB', 'GiB', 'TiB');
    my $i = 0;
    while ($n >= 1024 && $i < $#u) { $n /= 1024; $i++ }
    return $i ? sprintf('%.1f %s', $n, $u[$i]) : "$n B";
}

# ---- job level -------------------------------------------------------------

sub job_init {
    my ($self, $start_time) = @_;
    my $job = $self->_api->call('POST', '/api/v1/jobs',
        json => { node => _node(), storage => $self->{storeid}, start_time => int($start_time // time()) },
        what => 'starting the backup job');
    $self->{job_id} = $job->{id};
    $self->_log('info', "backstop: job $job->{id} on " . $self->_api->url . " (namespace '$self->{ns}')");
    return;
}

sub job_cleanup {
    my ($self) = @_;
    # Sessions vzdump never cleaned up (it should have) are not left open.
    for my $vmid (sort keys %{ $self->{guests} }) {
        my $g = $self->{guests}->{$vmid};
        next if $g->{finished};
        eval { $self->backup_cleanup($vmid, $g->{type}, 0, { error => 'job ended' }) };
    }
    my $id = $self->{job_id} or return; # never started, or already finished
    eval {
        $self->_api->call('POST', "/api/v1/jobs/$id/finish", what => 'finishing the backup job');
        delete $self->{job_id};
    };
    $self->_log('warn', "$@") if $@;
    return;
}

# ---- guest level -------------------------------------------------------------

sub backup_init {
    my ($self, $vmid, $vmtype, $start_time) = @_;
    die "backstop: cannot back up guests of type '" . ($vmtype // '') . "'\n"
        if !defined($vmtype) || ($vmtype ne 'qemu' && $vmtype ne 'lxc');
    my $req = {
        ns => $self->{ns},
        storage => $self->{storeid},
        vmid => int($vmid),
        type => $vmtype,
        backup_time => int($start_time // time()),
    };
    $req->{job_id} = $self->{job_id} if $self->{job_id};
    my $b = $self->_api->call('POST', '/api/v1/backups', json => $req,
        what => "opening the backup of $vmtype $vmid");
    $self->{guests}->{$vmid} = { id => $b->{id}, name => $b->{name}, type => $vmtype };
    return { 'archive-name' => $b->{name} };
}

sub backup_cleanup {
    my ($self, $vmid, $vmtype, $success, $info) = @_;
    # vzdump calls this also when backup_init never ran (guest missing,
    # prepare failed): then there is nothing to end.
    my $g = $self->{guests}->{$vmid};
    if (!$g || $g->{finished}) {
        return $success ? { stats => { 'archive-size' => $g ? ($g->{archive_size} // 0) : 0 } } : undef;
    }
    my $req = { success => $success ? JSON::true : JSON::false };
    if (!$success) {
        my $err = ref($info) eq 'HASH' ? $info->{error} : undef;
        $err = "$err" if defined($err);
        $req->{error} = substr($err, 0, 65536) if defined($err) && $err ne '';
    }
    my $res = eval {
        $self->_api->call('POST', "/api/v1/backups/$g->{id}/finish", json => $req,
            what => "ending the backup of $g->{type} $vmid");
    };
    my $err = $@;
    $g->{finished} = 1 if !$err;
    if ($success) {
        die $err if $err;
        $g->{archive_size} = int($res->{archive_size} // 0);
        $g->{ok} = 1;
        return { stats => { 'archive-size' => $g->{archive_size} } };
    }
    $self->_log('warn', "$err") if $err;
    return undef;
}

sub backup_get_mechanism {
    my ($self, $vmid, $vmtype) = @_;
    return 'nbd' if $vmtype eq 'qemu';
    return 'directory' if $vmtype eq 'lxc';
    die "backstop: guests of type '$vmtype' are not supported\n";
}

# Stores the per-guest vzdump log with the snapshot (after backup_cleanup).
sub backup_handle_log_file {
    my ($self, $vmid, $filename) = @_;
    my $g = delete $self->{guests}->{$vmid};
    return if !$g || !$g->{ok}; # failed backups are discarded on the server
    open(my $fh, '<', $filename) or do {
        $self->_log('warn', "backstop: cannot read log $filename: $!");
        return;
    };
    binmode($fh);
    my $max = 15 << 20; # the server takes up to 16 MiB of text
    my $size = -s $fh;
    seek($fh, $size - $max, 0) if $size > $max;
    local $/;
    my $log = <$fh> // '';
    close($fh);
    eval {
        $self->_api->call('PUT', "/api/v1/backups/$g->{id}/log", body => $log,
            type => 'text/plain; charset=utf-8', what => "storing the log of $vmid");
    };
    $self->_log('warn', "$@") if $@;
    return;
}

sub _put_text {
    my ($self, $g, $kind, $text) = @_;
    $self->_api->call('PUT', "/api/v1/backups/$g->{id}/$kind", body => $text,
        type => 'text/plain; charset=utf-8', what => "storing the $kind");
}

# ---- VM backup -----------------------------------------------------------------

sub backup_vm_query_incremental {
    my ($self, $vmid, $volumes) = @_;
    my $g = $self->_guest($vmid);
    return {} if !$volumes || !%$volumes;
    my $devices = { map { $_ => { size => int($volumes->{$_}->{size}) } } keys %$volumes };
    my $res = $self->_api->call('POST', "/api/v1/backups/$g->{id}/incremental",
        json => { devices => $devices }, what => 'asking which disks may be incremental');
    my $out = {};
    for my $dev (sort keys %$devices) {
        my $ans = $res->{devices}->{$dev} // 'new';
        $out->{$dev} = $ans eq 'use' ? 'use' : 'new';
        $self->_log('info', "$dev: " . ($out->{$dev} eq 'use'
            ? 'incremental: the last backup on this storage is its base'
            : 'no usable base on this storage: full backup (new dirty bitmap)'));
    }
    return $out;
}

sub backup_vm {
    my ($self, $vmid, $guest_config, $volumes, $info) = @_;
    my $g = $self->_guest($vmid);
    $info = {} if ref($info) ne 'HASH';
    $self->_put_text($g, 'config', $guest_config // '');
    my $fw = $info->{'firewall-config'};
    $self->_put_text($g, 'firewall', $fw) if defined($fw) && $fw ne '';

    my $bw = int($info->{'bandwidth-limit'} // 0);
    my $parallel = $bw > 0 ? 1 : $MAX_PARALLEL_DISKS;
    my @queue = sort keys %{ $volumes // {} };
    die "backstop: no disks to back up\n" if !@queue;

    my $relay = Backstop::Relay->new();
    my %active;
    my $ok = eval {
        my $next_poll = 0;
        while (@queue || %active) {
            while (@queue && scalar(keys %active) < $parallel) {
                my $dev = shift @queue;
                $active{$dev} = $self->_start_pull($g, $dev, $volumes->{$dev}, $bw, $relay);
            }
            $relay->step(0.25);
            next if time() < $next_poll;
            $next_poll = time() + 1;
            for my $dev (sort keys %active) {
                my $a = $active{$dev};
                $self->_poll_pull($dev, $a);
                my $pair_open = $a->{pair}->{open};
                if ($a->{state} eq 'error') {
                    my $why = $a->{error} // 'unknown error';
                    $why .= " (relay: $a->{pair}->{error})" if $a->{pair}->{error};
                    die "backstop: backup of $dev failed: $why\n";
                }
                if ($a->{state} eq 'ok') {
                    # The server closes the tunnel when its pull ends.
                    $relay->close($a->{pair}, 'pull done') if $pair_open && time() - $a->{done_at} > 10;
                    delete $active{$dev} if !$a->{pair}->{open};
                    next;
                }
                if (!$pair_open) {
                    $a->{closed_at} //= time();
                    die "backstop: the NBD tunnel of $dev ended ("
                        . ($a->{pair}->{error} // 'closed') . ") but the server's pull did not finish\n"
                        if time() - $a->{closed_at} > 120;
                }
            }
        }
        1;
    };
    my $err = $@;
    $relay->close_all('backup failed') if !$ok;
    die $err if !$ok;

    my $c = $self->_api->call('POST', "/api/v1/backups/$g->{id}/commit",
        what => "committing the backup of VM $vmid");
    $g->{committed} = 1;
    $self->_log('info', "backstop: backup committed as $c->{name} (" . _human($c->{size} // 0) . ")");
    return;
}

sub _start_pull {
    my ($self, $g, $dev, $vol, $bw, $relay) = @_;
    my $path = $vol->{'nbd-path'}
        or die "backstop: $dev: no nbd-path (only the nbd mechanism is supported)\n";
    my $local = IO::Socket::UNIX->new(Peer => $path, Type => SOCK_STREAM)
        or die "backstop: $dev: cannot connect to QEMU's NBD export $path: $!\n";
    my $mode = $vol->{'bitmap-mode'} // 'none';
    my $req = {
        device => $dev,
        size => int($vol->{size}),
        bitmap_mode => $mode,
        source => { tunnel => JSON::true },
    };
    if ($mode ne 'none') {
        if (defined($vol->{'bitmap-name'}) && $vol->{'bitmap-name'} ne '') {
            $req->{bitmap_name} = $vol->{'bitmap-name'};
        } elsif ($mode eq 'new') {
            $req->{bitmap_mode} = 'none'; # read everything either way
        } else {
            die "backstop: $dev: bitmap mode '$mode' without a bitmap name\n";
        }
    }
    $req->{bandwidth_limit} = $bw if $bw > 0;
    my $t = $self->_api->call('POST', "/api/v1/backups/$g->{id}/disks", json => $req,
        what => "starting the pull of $dev");
    my ($tunnel, $leftover) = eval {
        $self->_api->upgrade("/api/v1/backups/$g->{id}/disks/" . Backstop::Client::seg($dev) . "/tunnel");
    };
    if (my $err = $@) {
        close($local);
        die $err;
    }
    $self->_log('info', "$dev: server pulls " . _human($req->{size})
        . " (bitmap mode $req->{bitmap_mode}) through the NBD tunnel");
    return {
        task => $t->{task_id},
        pair => $relay->add($dev, $tunnel, $local, $leftover),
        state => 'running',
        seq => 0,
        started => time(),
        last_log => time(),
    };
}

# Reads the pull's task: state, progress, and the server's log lines,
# which go to the task log.
sub _poll_pull {
    my ($self, $dev, $a) = @_;
    my $t = eval { $self->_api->call('GET', "/api/v1/tasks/$a->{task}", timeout => 30) };
    if (my $err = $@) {
        $self->_log('warn', "$dev: cannot read the pull's progress: $err");
        return;
    }
    my $lines = eval {
        $self->_api->call('GET', "/api/v1/tasks/$a->{task}/log", query => { since => $a->{seq} }, timeout => 30);
    };
    for my $l (@{ $lines->{lines} // [] }) {
        $a->{seq} = $l->{seq} if $l->{seq} > $a->{seq};
        $self->_log($l->{text} =~ /^warning/i ? 'warn' : 'info', "$dev: server: $l->{text}");
    }
    my ($done, $total) = ($t->{done} // 0, $t->{total} // 0);
    if ($t->{state} eq 'running' && time() - $a->{last_log} >= $PROGRESS_INTERVAL) {
        my $el = time() - $a->{started};
        $self->_log('info', sprintf("%s: %d%% (%s of %s) in %ds, %s/s", $dev,
            $total ? int(100 * $done / $total) : 0, _human($done), _human($total), $el,
            _human(int($done / ($el || 1)))));
        $a->{last_log} = time();
    }
    if ($t->{state} ne 'running' && $a->{state} eq 'running') {
        $a->{state} = $t->{state};
        $a->{error} = $t->{error};
        $a->{done_at} = time();
    }
}

# ---- container backup -----------------------------------------------------------

sub backup_container_prepare {
    my ($self, $vmid, $info) = @_;
    my $g = $self->_guest($vmid);
    die "backstop: container directory '" . ($info->{directory} // '') . "' does not exist\n"
        if !defined($info->{directory}) || !-d $info->{directory};
    # Everything backup_container needs is in this object already (token,
    # session id, server address); it runs in a fork as the container's root.
    $self->_log('info', "backstop: archiving as uid " . ($info->{'backup-user-id'} // 0)
        . " into session $g->{name}");
    return;
}

sub _tar_flags {
    no warnings 'once';
    my @f = @PVE::Storage::Plugin::COMMON_TAR_FLAGS;
    return @f ? @f : @FALLBACK_TAR_FLAGS;
}

# tar_command($info, $exclude_patterns): the archive command, as vzdump
# builds its own (pve-container VZDump/LXC.pm), in POSIX format without
# atime and ctime, so an unchanged file gets the same header every run (and
# the server's chunks dedup). Sparse files use PAX sparse format 0.0: the
# newer ones name the member GNUSparseFile.<tar's pid>, different each run.
sub tar_command {
    my ($info, $exclude_patterns) = @_;
    my @cmd = ($TAR, 'cpf', '-', '--totals', _tar_flags(), '--format=posix', '--sparse-version=0.0',
        '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime',
        "--directory=$info->{directory}");
    my (@anchored, @floating);
    for my $p (@{ $exclude_patterns // [] }) {
        if ($p =~ m|^/|) { push @anchored, $p } else { push @floating, $p }
    }
    push @cmd, '--no-anchored';
    push @cmd, '--exclude=lost+found' if ($info->{'backup-user-id'} // 0) != 0;
    push @cmd, map { "--exclude=$_" } @floating;
    push @cmd, '--anchored';
    push @cmd, map { "--exclude=.$_" } @anchored;
    my @sources = @{ $info->{sources} // ['.'] };
    push @cmd, @sources;
    return @cmd;
}

sub backup_container {
    my ($self, $vmid, $guest_config, $exclude_patterns, $info) = @_;
    my $g = $self->_guest($vmid);
    $self->_put_text($g, 'config', $guest_config // '');
    my $fw = $info->{'firewall-config'};
    $self->_put_text($g, 'firewall', $fw) if defined($fw) && $fw ne '';

    my @cmd = tar_command($info, $exclude_patterns);
    pipe(my $out_r, my $out_w) or die "backstop: pipe: $!\n";
    pipe(my $err_r, my $err_w) or die "backstop: pipe: $!\n";
    my $pid = fork() // die "backstop: fork: $!\n";
    if (!$pid) {
        open(STDIN, '<', '/dev/null');
        open(STDOUT, '>&', $out_w);
        open(STDERR, '>&', $err_w);
        close($_) for ($out_r, $err_r, $out_w, $err_w);
        exec(@cmd) or POSIX::_exit(127);
    }
    close($out_w);
    close($err_w);

    my $bw = $info->{'bandwidth-limit'} // 0;
    my ($sent, $start, $last_log) = (0, time(), time());
    my $sel = IO::Select->new($out_r, $err_r);
    my ($stderr, @errlines) = ('');
    my $out_open = 1;
    my $flush_err = sub {
        while ($stderr =~ s/^([^\n]*)\n//) {
            my $line = $1;
            push @errlines, $line;
            shift @errlines if @errlines > 20;
            $self->_log('info', "tar: $line");
        }
    };
    my $tar_status;
    my $producer = sub {
        while ($out_open) {
            for my $fh ($sel->can_read(1)) {
                my $buf = '';
                my $n = sysread($fh, $buf, 1 << 20);
                next if !defined($n) && $! == EINTR;
                if ($fh == $err_r) {
                    if (!$n) { $sel->remove($err_r); next }
                    $stderr .= $buf;
                    $flush_err->();
                    next;
                }
                if (!defined($n)) {
                    $self->_log('err', "backstop: reading tar's output failed: $!");
                    return undef;
                }
                if ($n == 0) { $out_open = 0; last }
                $sent += $n;
                if ($bw > 0) {
                    my $ahead = $sent / $bw - (time() - $start);
                    sleep($ahead) if $ahead > 0;
                }
                if (time() - $last_log >= $PROGRESS_INTERVAL) {
                    $self->_log('info', sprintf("backstop: %s sent in %ds", _human($sent), time() - $start));
                    $last_log = time();
                }
                return $buf;
            }
        }
        # tar closed its output: collect its last words and its exit status.
        while ($sel->exists($err_r) && $sel->can_read(5)) {
            my $n = sysread($err_r, my $buf, 65536);
            last if !$n;
            $stderr .= $buf;
        }
        $stderr .= "\n" if $stderr ne '' && $stderr !~ /\n$/;
        $flush_err->();
        waitpid($pid, 0);
        $tar_status = $?;
        return $tar_status == 0 ? '' : undef;
    };
    my $res = eval {
        $self->_api->request('PUT', "/api/v1/backups/$g->{id}/archive", body_cb => $producer,
            type => 'application/x-tar', timeout => 600);
    };
    my $err = $@;
    if (!defined($tar_status)) { # the upload stopped first: stop tar
        kill('TERM', $pid);
        waitpid($pid, 0);
    }
    close($out_r);
    close($err_r);
    if (defined($tar_status) && $tar_status != 0) {
        my $code = $tar_status >> 8;
        die "backstop: tar failed (exit code $code): " . join(' / ', @errlines[-3 .. -1]) . "\n"
            if @errlines >= 3;
        die "backstop: tar failed (exit code $code)" . (@errlines ? ": " . join(' / ', @errlines) : '') . "\n";
    }
    die $err if $err;
    if ($res->{status} != 201 && $res->{status} != 200) {
        die "backstop: storing the container archive: server " . $self->_api->url . " answered "
            . Backstop::Client::problem_text($res) . "\n";
    }
    my $a = eval { JSON::decode_json($res->{content}) } // {};
    $self->_log('info', sprintf("backstop: archive stored: %s in %d files, %s new", _human($a->{size} // $sent),
        $a->{files} // 0, _human($a->{new_bytes} // 0)));
    my $c = $self->_api->call('POST', "/api/v1/backups/$g->{id}/commit",
        what => "committing the backup of container $vmid");
    $self->_log('info', "backstop: backup committed as $c->{name}");
    return;
}

# ---- restore -----------------------------------------------------------------

# pve-container passes an extra $storeid to several restore calls (left
# over from an earlier API draft); every restore method ignores extra
# arguments and never dereferences $info.

sub restore_get_mechanism {
    my ($self, $volname) = @_;
    my (undef, $type) = _snapshot_name($volname);
    return ('qemu-img', 'qemu') if $type eq 'qemu';
    return ('tar', 'lxc');
}

sub archive_get_guest_config {
    my ($self, $volname) = @_;
    my ($name) = _snapshot_name($volname);
    my (undef, $res) = $self->_api->call('GET', $self->_snapshot_path($name, 'config'),
        query => { ns => $self->{ns} }, what => "reading the configuration of $name");
    return $res->{content};
}

sub archive_get_firewall_config {
    my ($self, $volname) = @_;
    my ($name) = _snapshot_name($volname);
    my (undef, $res) = $self->_api->call('GET', $self->_snapshot_path($name, 'firewall'),
        query => { ns => $self->{ns} }, ok => [404], what => "reading the firewall configuration of $name");
    return $res->{content} if $res->{status} == 200;
    # 404: no firewall file, unless the backup itself is missing.
    $self->_api->call('GET', $self->_snapshot_path($name), query => { ns => $self->{ns} },
        what => "reading backup $name");
    return undef;
}

sub restore_vm_init {
    my ($self, $volname) = @_;
    my ($name) = _snapshot_name($volname);
    my $disks = $self->_api->call('GET', $self->_snapshot_path($name, 'disks'),
        query => { ns => $self->{ns} }, what => "listing the disks of $name");
    die "backstop: backup $name has no disks\n" if !@{ $disks // [] };
    return { map { $_->{device} => { size => int($_->{size}) } } @$disks };
}

sub restore_vm_volume_init {
    my ($self, $volname, $device, $info) = @_;
    my ($name) = _snapshot_name($volname);
    $self->restore_vm_volume_cleanup($volname, $device); # a retry starts clean
    my $export = $self->_api->call('POST', $self->_snapshot_path($name, 'disks', $device, 'exports'),
        json => { ns => $self->{ns}, ttl_seconds => 604800 }, what => "exporting $device of $name");
    my $st = { export => $export, device => $device };
    $self->{vm_restores}->{$volname}->{$device} = $st;
    my $ok = eval {
        my $run = do { no warnings 'once'; $PVE::Storage::Custom::BackstopPlugin::RUN_DIR };
        make_path($run, { mode => 0700 });
        $st->{dir} = File::Temp::tempdir("restore-XXXXXXXX", DIR => $run, CLEANUP => 0);
        chmod(0700, $st->{dir});
        make_path("$st->{dir}/mnt");
        my $uri = $self->_export_uri($st);
        $st->{path} = "$st->{dir}/mnt/$device";
        $self->_start_nbdfuse($st, $uri);
        1;
    };
    if (!$ok) {
        my $err = $@;
        eval { $self->restore_vm_volume_cleanup($volname, $device) };
        die $err;
    }
    $self->_log('info', "backstop: $device of $name is served at $st->{path} ("
        . ($st->{relay_pid} ? 'through the HTTPS tunnel' : "NBD $export->{uri}") . ")");
    return { 'qemu-img-path' => $st->{path} };
}

# Chooses how nbdfuse reaches the export: through an HTTPS tunnel relayed
# from a private local socket (default: encrypted, pinned, one port), or
# straight at the server's NBD port when this server has no export tunnel.
sub _export_uri {
    my ($self, $st) = @_;
    my $export = $st->{export};
    my ($probe) = eval { $self->_api->upgrade($export->{tunnel}) };
    if (my $err = $@) {
        my $status = ref($err) ? $err->status : 0;
        die $err if !($status == 404 || $status == 501) || !$export->{uri};
        chomp(my $msg = "$err");
        $self->_log('warn', "backstop: export tunnel unavailable ($msg); using NBD at $export->{uri}");
        return $export->{uri};
    }
    if (ref($probe) =~ /SSL/) { $probe->close(SSL_fast_shutdown => 1) } else { close($probe) }

    my $sock_path = "$st->{dir}/nbd.sock";
    my $listener = IO::Socket::UNIX->new(Local => $sock_path, Type => SOCK_STREAM, Listen => 8)
        or die "backstop: cannot listen on $sock_path: $!\n";
    my $client = $self->_api;
    my $pid = fork() // die "backstop: fork: $!\n";
    if (!$pid) {
        eval { _serve_export_tunnels($client, $listener, $export->{tunnel}, $self->{log_function}) };
        POSIX::_exit(0);
    }
    close($listener);
    $st->{relay_pid} = $pid;
    return "nbd+unix:///$export->{export}?socket=$sock_path";
}

# In the relay process: each local connection gets its own tunnel.
sub _serve_export_tunnels {
    my ($client, $listener, $tunnel_path, $log) = @_;
    $SIG{TERM} = $SIG{INT} = $SIG{HUP} = 'DEFAULT';
    $SIG{PIPE} = 'IGNORE';
    my $parent = getppid();
    my $relay = Backstop::Relay->new();
    my $n = 0;
    while (1) {
        my @ready = $relay->step(1, $listener);
        last if getppid() != $parent; # the restore is gone
        next if !@ready;
        my $conn = $listener->accept() or next;
        my ($tun, $leftover) = eval { $client->upgrade($tunnel_path) };
        if (my $err = $@) {
            $log->('err', "$err") if $log;
            close($conn);
            next;
        }
        $relay->add('export-' . ++$n, $tun, $conn, $leftover);
    }
}

sub _start_nbdfuse {
    my ($self, $st, $uri) = @_;
    my $pidfile = "$st->{dir}/nbdfuse.pid";
    my $logfile = "$st->{dir}/nbdfuse.log";
    my $pid = fork() // die "backstop: fork: $!\n";
    if (!$pid) {
        open(STDIN, '<', '/dev/null');
        open(STDOUT, '>', $logfile);
        open(STDERR, '>&', \*STDOUT);
        exec($NBDFUSE, '--readonly', '--pidfile', $pidfile, $st->{path}, $uri) or POSIX::_exit(127);
    }
    $st->{fuse_pid} = $pid;
    my $deadline = time() + 30;
    while (time() < $deadline) {
        if (-s $pidfile && -e $st->{path}) {
            return;
        }
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $st->{fuse_pid};
            my $out = '';
            if (open(my $fh, '<', $logfile)) { local $/; $out = <$fh> // ''; close($fh) }
            $out =~ s/\s+/ /g;
            die "backstop: nbdfuse could not mount the export (exit code " . ($? >> 8) . "): $out\n";
        }
        sleep(0.05);
    }
    die "backstop: nbdfuse did not mount the export within 30s\n";
}

sub _teardown_vm_volume {
    my ($self, $st) = @_;
    my @problems;
    if (my $pid = $st->{fuse_pid}) {
        if (-d "$st->{dir}/mnt") {
            system('fusermount3', '-u', '-q', "$st->{dir}/mnt") == 0
                or system('fusermount', '-u', '-q', "$st->{dir}/mnt") == 0
                or system('umount', '-l', "$st->{dir}/mnt");
        }
        my $gone = 0;
        for (1 .. 100) {
            if (waitpid($pid, WNOHANG) != 0) { $gone = 1; last }
            sleep(0.05);
        }
        if (!$gone) {
            kill('TERM', $pid);
            waitpid($pid, 0);
        }
    }
    if (my $pid = $st->{relay_pid}) {
        kill('TERM', $pid);
        waitpid($pid, 0);
    }
    if (my $id = $st->{export}->{id}) {
        eval {
            $self->_api->call('DELETE', "/api/v1/exports/" . Backstop::Client::seg($id), ok => [404],
                what => "removing export $id");
        };
        push @problems, "$@" if $@;
    }
    if ($st->{dir}) {
        my $still = 0;
        if (open(my $m, '<', '/proc/self/mounts')) {
            $still = grep { (split(' ', $_))[1] eq "$st->{dir}/mnt" } <$m>;
            close($m);
        }
        if ($still) {
            push @problems, "backstop: $st->{dir}/mnt is still mounted\n";
        } else {
            remove_tree($st->{dir});
        }
    }
    $self->_log('warn', $_) for @problems;
}

sub restore_vm_volume_cleanup {
    my ($self, $volname, $device, $info) = @_;
    my $st = delete $self->{vm_restores}->{$volname}->{$device} or return;
    $self->_teardown_vm_volume($st);
    return;
}

sub restore_vm_cleanup {
    my ($self, $volname) = @_;
    my $all = delete $self->{vm_restores}->{$volname} or return;
    $self->_teardown_vm_volume($all->{$_}) for sort keys %$all;
    return;
}

sub restore_container_init {
    my ($self, $volname, @ignored) = @_;
    my ($name, $type) = _snapshot_name($volname);
    die "backstop: $name is not a container backup\n" if $type ne 'lxc';
    $self->restore_container_cleanup($volname);
    make_path($TMP_DIR);
    my $dir = File::Temp::tempdir("backstop-restore-XXXXXXXX", DIR => $TMP_DIR, CLEANUP => 0);
    chmod(0700, $dir);
    $self->{ct_restores}->{$volname} = $dir;
    my $part = "$dir/$name.download";
    open(my $fh, '>', $part) or die "backstop: cannot write $part: $!\n";
    binmode($fh);
    my ($start, $last) = (time(), time());
    my $res = $self->_api->request('GET', $self->_snapshot_path($name, 'archive'),
        query => { ns => $self->{ns}, compress => 'zstd' }, save_fh => $fh, timeout => 600,
        on_data => sub {
            my ($n) = @_;
            return if time() - $last < $PROGRESS_INTERVAL;
            $last = time();
            $self->_log('info', sprintf("backstop: %s downloaded in %ds", _human($n), time() - $start));
        });
    close($fh) or die "backstop: writing $part failed: $!\n";
    if ($res->{status} != 200) {
        die "backstop: downloading the archive of $name: server " . $self->_api->url . " answered "
            . Backstop::Client::problem_text($res) . "\n";
    }
    # PVE picks the decompressor from the file name.
    my $ctype = $res->{headers}->{'content-type'} // '';
    my $file = "$dir/$name" . ($ctype =~ m{zstd} ? '.tar.zst' : '.tar');
    rename($part, $file) or die "backstop: rename $part: $!\n";
    $self->_log('info', "backstop: archive of $name downloaded (" . _human(-s $file) . ")");
    return { 'tar-path' => $file };
}

sub restore_container_cleanup {
    my ($self, $volname, @ignored) = @_;
    my $dir = delete $self->{ct_restores}->{$volname} or return;
    remove_tree($dir);
    return;
}

1;
