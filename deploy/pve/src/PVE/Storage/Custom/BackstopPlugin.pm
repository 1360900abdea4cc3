package PVE::Storage::Custom::BackstopPlugin;

# Proxmox VE storage plugin for Backstop, a remote backup target. The
# storage holds only backups (volumes `backup/<snapshot name>`); vzdump,
# qmrestore and pct restore reach it through the backup provider
# PVE::BackupProvider::Plugin::Backstop. Every call is HTTP to the Backstop
# server; nothing is stored on the node but the API token (under
# /etc/pve/priv/storage/) and a few seconds of cached status.

use strict;
use warnings;

use Digest::SHA qw(sha1_hex);
use Fcntl qw(O_WRONLY O_CREAT O_EXCL);
use File::Path qw(make_path);
use JSON ();
use Sys::Hostname ();
use Time::HiRes ();
use Time::Local qw(timegm);

use PVE::Storage::Plugin;
use PVE::BackupProvider::Plugin::Backstop;
use Backstop::Client;

use base qw(PVE::Storage::Plugin);

# Where secrets and run-time state live; tests point these elsewhere.
our $PRIV_DIR = '/etc/pve/priv/storage';
our $RUN_DIR = '/run/backstop';

# Storage API versions this plugin was written and tested against: 11 added
# the backup provider API (PVE 8.4); up to 15 (PVE 9.1) changed nothing it
# uses.
use constant MIN_APIVER => 11;
use constant MAX_APIVER => 15;

# pvestatd gives up on a storage after 7 s: status never waits longer than
# this for the server, and answers are cached briefly.
our $STATUS_TIMEOUT = 2;
our $STATUS_TTL = 5;        # a good answer is reused for this long
our $STATUS_DOWN_TTL = 15;  # an unreachable server is not asked again for this long

my $NAME_RE = qr/(qemu|lxc)-(\d{1,9})-(\d{4})_(\d\d)_(\d\d)-(\d\d)_(\d\d)_(\d\d)/;
my $NS_RE = qr/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/;

sub api {
    # The running PVE's version when we know it; a newer PVE gets the newest
    # version we know (it loads us while that is within its APIAGE, and says
    # clearly why not otherwise); an older one gets 11, which it refuses: it
    # has no backup provider API.
    my $apiver = eval { PVE::Storage::APIVER() };
    return MAX_APIVER if !defined($apiver) || $apiver > MAX_APIVER;
    return $apiver >= MIN_APIVER ? $apiver : MIN_APIVER;
}

sub type { return 'backstop' }

sub plugindata {
    return {
        content => [{ backup => 1, none => 1 }, { backup => 1 }],
        features => { 'backup-provider' => 1 },
        'sensitive-properties' => { token => 1 },
    };
}

# Property names are global across all storage types: only names no other
# plugin defines go here. `server`, `port`, `fingerprint` and `namespace`
# are PVE's (NFS/PBS/RBD) and are only listed in options().
sub properties {
    return {
        token => {
            description => "Backstop API token (role 'backup'), as printed by"
                . " 'server token create'. Kept in /etc/pve/priv/storage/<storage>.token.",
            type => 'string',
        },
    };
}

sub options {
    return {
        server => {},
        port => { optional => 1 },
        token => { optional => 1 },
        fingerprint => { optional => 1 },
        namespace => { optional => 1 },
        content => { optional => 1 },
        nodes => { optional => 1 },
        disable => { optional => 1 },
        shared => { optional => 1 },
        'prune-backups' => { optional => 1 },
        'max-protected-backups' => { optional => 1 },
    };
}

# ---- configuration helpers -------------------------------------------------

sub token_file {
    my ($storeid) = @_;
    return "$PRIV_DIR/$storeid.token";
}

sub read_token {
    my ($storeid) = @_;
    my $file = token_file($storeid);
    open(my $fh, '<', $file)
        or die "backstop: no API token for storage '$storeid' ($file: $!);"
        . " set one with: pvesm set $storeid --token <token>\n";
    my $token = <$fh> // '';
    close($fh);
    $token =~ s/\s+$//;
    die "backstop: API token file $file is empty\n" if $token eq '';
    return $token;
}

sub write_token {
    my ($storeid, $token) = @_;
    $token =~ s/^\s+|\s+$//g;
    die "backstop: the token must not be empty\n" if $token eq '';
    die "backstop: the token must be a single line\n" if $token =~ /[\r\n]/;
    make_path($PRIV_DIR);
    my $file = token_file($storeid);
    my $tmp = "$file.tmp.$$";
    unlink($tmp);
    sysopen(my $fh, $tmp, O_WRONLY | O_CREAT | O_EXCL, 0600)
        or die "backstop: cannot write $tmp: $!\n";
    print {$fh} "$token\n" or die "backstop: cannot write $tmp: $!\n";
    close($fh) or die "backstop: cannot write $tmp: $!\n";
    rename($tmp, $file) or die "backstop: cannot rename $tmp to $file: $!\n";
}

sub delete_token {
    my ($storeid) = @_;
    unlink(token_file($storeid));
}

sub namespace {
    my ($scfg) = @_;
    return $scfg->{namespace} // 'default';
}

sub check_namespace {
    my ($ns) = @_;
    return if !defined($ns);
    die "backstop: namespace '$ns' is not valid: letters, digits, '.', '_' and '-',"
        . " starting with a letter or digit, at most 63 characters\n"
        if $ns !~ $NS_RE;
}

# client($scfg, $storeid, %opts) builds an API client; the token is read
# from the private file unless given.
sub client {
    my ($scfg, $storeid, %opts) = @_;
    my $token = delete($opts{token}) // read_token($storeid);
    return Backstop::Client->new(
        host => $scfg->{server},
        port => $scfg->{port} // 8280,
        fingerprint => $scfg->{fingerprint},
        token => $token,
        %opts,
    );
}

# Parses a snapshot name into (type, vmid, unix time).
sub parse_snapshot_name {
    my ($name) = @_;
    my ($type, $vmid, @t) = $name =~ /^$NAME_RE$/ or return;
    my $time = eval { timegm($t[5], $t[4], $t[3], $t[2], $t[1] - 1, $t[0]) };
    return if !defined($time);
    return ($type, $vmid + 0, $time);
}

sub snapshot_path {
    my ($name) = @_;
    return '/api/v1/snapshots/' . Backstop::Client::seg($name);
}

# ---- storage lifecycle ---------------------------------------------------

sub on_add_hook {
    my ($class, $storeid, $scfg, %param) = @_;
    check_namespace($scfg->{namespace});
    Backstop::Client::normalize_fingerprint($scfg->{fingerprint});
    die "backstop: a token is required: pvesm add backstop $storeid --server <host> --token <token>\n"
        if !defined($param{token});
    write_token($storeid, $param{token});
    forget_status($storeid);
    return;
}

sub on_update_hook {
    my ($class, $storeid, $scfg, %param) = @_;
    check_namespace($scfg->{namespace}) if exists($scfg->{namespace});
    Backstop::Client::normalize_fingerprint($scfg->{fingerprint}) if exists($scfg->{fingerprint});
    if (exists($param{token})) {
        if (defined($param{token})) {
            write_token($storeid, $param{token});
        } else {
            delete_token($storeid);
        }
    }
    forget_status($storeid);
    return;
}

sub on_delete_hook {
    my ($class, $storeid, $scfg) = @_;
    delete_token($storeid);
    forget_status($storeid);
    return;
}

# ---- status, from a short-lived cache --------------------------------------

my %status_cache; # in this process: storeid => { key, at, result }

sub _status_cache_file {
    my ($storeid) = @_;
    return "$RUN_DIR/status-$storeid.json";
}

sub _status_key {
    my ($scfg, $storeid) = @_;
    my $token = eval { read_token($storeid) } // '';
    return sha1_hex(join("\0", $scfg->{server} // '', $scfg->{port} // '',
        $scfg->{fingerprint} // '', $token));
}

sub forget_status {
    my ($storeid) = @_;
    delete $status_cache{$storeid};
    unlink(_status_cache_file($storeid));
}

# server_status($scfg, $storeid) returns { active, total, avail, used,
# error } from the cache or, at most every few seconds, from the server
# with a short timeout. It never dies.
sub server_status {
    my ($scfg, $storeid) = @_;
    my $key = _status_key($scfg, $storeid);
    my $now = time();
    my $fresh = sub {
        my ($c) = @_;
        return $c && $c->{key} eq $key && $c->{at} <= $now
            && $now - $c->{at} < ($c->{result}->{active} ? $STATUS_TTL : $STATUS_DOWN_TTL);
    };
    my $c = $status_cache{$storeid};
    return $c->{result} if $fresh->($c);
    my $file = _status_cache_file($storeid);
    if (open(my $fh, '<', $file)) {
        local $/;
        my $disk = eval { JSON::decode_json(<$fh>) };
        close($fh);
        if ($fresh->($disk)) {
            $status_cache{$storeid} = $disk;
            return $disk->{result};
        }
    }
    my $result = eval {
        my $client = client($scfg, $storeid,
            connect_timeout => $STATUS_TIMEOUT, timeout => $STATUS_TIMEOUT);
        my $st = $client->call('GET', '/api/v1/status', what => 'status');
        {
            active => $st->{active} ? 1 : 0,
            total => int($st->{total} // 0),
            avail => int($st->{avail} // 0),
            used => int($st->{used} // 0),
            error => $st->{active} ? undef
                : "backstop server reports it is not ready: " . ($st->{error} // 'unknown reason'),
        };
    };
    if (my $err = $@) {
        chomp($err = "$err");
        $result = { active => 0, total => 0, avail => 0, used => 0, error => $err };
    }
    $c = { key => $key, at => time(), result => $result };
    $status_cache{$storeid} = $c;
    eval {
        make_path($RUN_DIR, { mode => 0700 });
        my $tmp = "$file.$$";
        open(my $fh, '>', $tmp) or die;
        print {$fh} JSON::encode_json($c);
        close($fh) or die;
        rename($tmp, $file) or die;
    };
    return $result;
}

sub status {
    my ($class, $storeid, $scfg, $cache) = @_;
    my $st = server_status($scfg, $storeid);
    return (0, 0, 0, 0) if !$st->{active};
    return ($st->{total}, $st->{avail}, $st->{used}, 1);
}

sub check_connection {
    my ($class, $storeid, $scfg) = @_;
    my $st = server_status($scfg, $storeid);
    die "$st->{error}\n" if !$st->{active};
    return 1;
}

sub activate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    return 1;
}

sub deactivate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    return 1;
}

# Fails fast while the status cache knows the server is unreachable, so the
# GUI and vzdump do not wait for one timeout after another.
sub _client_checked {
    my ($scfg, $storeid) = @_;
    my $c = $status_cache{$storeid};
    if ($c && !$c->{result}->{active} && time() - $c->{at} < $STATUS_DOWN_TTL
        && ($c->{result}->{error} // '') =~ /cannot connect|did not answer|TLS/) {
        die "$c->{result}->{error}\n";
    }
    return client($scfg, $storeid, connect_timeout => 5, timeout => 30);
}

# ---- volumes -------------------------------------------------------------

sub parse_volname {
    my ($class, $volname) = @_;
    if ($volname =~ m!^backup/($NAME_RE)$!) {
        my ($name, $type, $vmid) = ($1, $2, $3);
        return ('backup', $name, $vmid + 0, undef, undef, undef, "backstop-$type");
    }
    die "unable to parse backstop volume name '$volname'\n";
}

# A volume has no local path; this names it for messages and permission
# checks (vtype 'backup', owner vmid) without any network call.
sub path {
    my ($class, $scfg, $volname, $storeid, $snapname) = @_;
    die "volume snapshots are not possible on backstop storage\n" if defined($snapname);
    my ($vtype, $name, $vmid) = $class->parse_volname($volname);
    my $host = ($scfg->{server} // '') =~ /:/ ? "[$scfg->{server}]" : ($scfg->{server} // '');
    my $path = "backstop://$host:" . ($scfg->{port} // 8280) . '/' . namespace($scfg) . "/$name";
    return wantarray ? ($path, $vmid, $vtype) : $path;
}

sub filesystem_path {
    my ($class, $scfg, $volname, $snapname) = @_;
    return $class->path($scfg, $volname, undef, $snapname);
}

sub list_volumes {
    my ($class, $storeid, $scfg, $vmid, $content_types) = @_;
    return [] if !grep { $_ eq 'backup' } @{ $content_types // ['backup'] };
    my $client = _client_checked($scfg, $storeid);
    my $snaps = $client->call('GET', '/api/v1/snapshots',
        query => { ns => namespace($scfg), vmid => $vmid }, what => 'listing backups');
    my $res = [];
    for my $s (@{ $snaps // [] }) {
        next if defined($vmid) && $s->{vmid} != $vmid;
        my $info = {
            volid => "$storeid:backup/$s->{name}",
            vmid => int($s->{vmid}),
            ctime => int($s->{backup_time}),
            size => int($s->{size} // 0),
            format => "backstop-$s->{type}",
            content => 'backup',
            subtype => $s->{type},
        };
        $info->{protected} = 1 if $s->{protected};
        $info->{notes} = $s->{notes} if defined($s->{notes}) && $s->{notes} ne '';
        $info->{verification} = { state => $s->{verify_state} }
            if ($s->{verify_state} // 'none') ne 'none';
        push @$res, $info;
    }
    return $res;
}

sub list_images {
    my ($class, $storeid, $scfg, $vmid, $vollist, $cache) = @_;
    return [];
}

sub _get_snapshot {
    my ($class, $scfg, $storeid, $volname) = @_;
    my (undef, $name) = $class->parse_volname($volname);
    my $client = _client_checked($scfg, $storeid);
    return $client->call('GET', snapshot_path($name), query => { ns => namespace($scfg) },
        what => "reading backup $name");
}

sub volume_size_info {
    my ($class, $scfg, $storeid, $volname, $timeout) = @_;
    my $s = $class->_get_snapshot($scfg, $storeid, $volname);
    my $size = int($s->{size} // 0);
    return wantarray ? ($size, "backstop-$s->{type}", $size, undef, int($s->{backup_time})) : $size;
}

sub get_volume_notes {
    my ($class, $scfg, $storeid, $volname, $timeout) = @_;
    return $class->_get_snapshot($scfg, $storeid, $volname)->{notes} // '';
}

sub update_volume_notes {
    my ($class, $scfg, $storeid, $volname, $notes, $timeout) = @_;
    $class->update_volume_attribute($scfg, $storeid, $volname, 'notes', $notes);
    return undef;
}

sub get_volume_attribute {
    my ($class, $scfg, $storeid, $volname, $attribute) = @_;
    return if $attribute ne 'notes' && $attribute ne 'protected';
    my $s = $class->_get_snapshot($scfg, $storeid, $volname);
    return $s->{notes} // '' if $attribute eq 'notes';
    return $s->{protected} ? 1 : 0;
}

sub update_volume_attribute {
    my ($class, $scfg, $storeid, $volname, $attribute, $value) = @_;
    my $body;
    if ($attribute eq 'notes') {
        $body = { notes => $value // '' };
    } elsif ($attribute eq 'protected') {
        $body = { protected => $value ? JSON::true : JSON::false };
    } else {
        die "attribute '$attribute' is not supported for storage type 'backstop'\n";
    }
    my (undef, $name) = $class->parse_volname($volname);
    my $client = _client_checked($scfg, $storeid);
    $client->call('PATCH', snapshot_path($name), query => { ns => namespace($scfg) },
        json => $body, what => "setting $attribute of backup $name");
    return;
}

sub free_image {
    my ($class, $storeid, $scfg, $volname, $isBase, $format) = @_;
    my (undef, $name) = $class->parse_volname($volname);
    my $client = _client_checked($scfg, $storeid);
    my ($data, $res) = $client->call('DELETE', snapshot_path($name),
        query => { ns => namespace($scfg) }, ok => [404, 409], what => "removing backup $name");
    if ($res->{status} == 409) {
        die "cannot remove protected backup '$volname' on '$storeid': "
            . Backstop::Client::problem_text($res) . "\n";
    }
    warn "backup '$volname' does not exist on '$storeid'\n" if $res->{status} == 404;
    return undef;
}

# Retention runs on the server (POST /prune, PBS/PVE keep-* semantics); the
# answer is turned into PVE's list of marks.
sub prune_backups {
    my ($class, $scfg, $storeid, $keep, $vmid, $type, $dryrun, $logfunc) = @_;
    $logfunc //= sub { print "$_[1]\n" };
    my %k = %{ $keep // {} };
    my $keep_all = delete $k{'keep-all'};
    my %rules;
    for my $opt (qw(last hourly daily weekly monthly yearly)) {
        my $v = delete $k{"keep-$opt"};
        $rules{$opt} = int($v) if defined($v) && $v > 0;
    }
    die "backstop: unknown prune option(s): " . join(', ', sort keys %k) . "\n" if %k;

    my @marks;
    if ($keep_all || !%rules) {
        # Nothing to remove: no need to bother the server's retention.
        for my $v (@{ $class->list_volumes($storeid, $scfg, $vmid, ['backup']) }) {
            next if defined($type) && $v->{subtype} ne $type;
            push @marks, {
                volid => $v->{volid}, ctime => $v->{ctime}, type => $v->{subtype},
                vmid => $v->{vmid}, mark => $v->{protected} ? 'protected' : 'keep',
            };
        }
        return \@marks;
    }

    my $client = _client_checked($scfg, $storeid);
    my $req = { ns => namespace($scfg), keep => \%rules, dry_run => $dryrun ? JSON::true : JSON::false };
    $req->{vmid} = int($vmid) if defined($vmid);
    $req->{type} = $type if defined($type);
    my $res = $client->call('POST', '/api/v1/prune', json => $req, what => 'pruning backups');
    for my $m (@{ $res // [] }) {
        my ($btype, $bvmid, $ctime) = parse_snapshot_name($m->{name});
        if (!defined($btype)) {
            $logfunc->('warn', "prune: ignoring unexpected snapshot name '$m->{name}'");
            next;
        }
        my $volid = "$storeid:backup/$m->{name}";
        push @marks, { volid => $volid, ctime => $ctime, type => $btype, vmid => $bvmid, mark => $m->{mark} };
        $logfunc->('info', "removing backup '$volid'") if !$dryrun && $m->{mark} eq 'remove';
    }
    return \@marks;
}

# ---- backup provider -------------------------------------------------------

sub new_backup_provider {
    my ($class, $scfg, $storeid, $log_function) = @_;
    return PVE::BackupProvider::Plugin::Backstop->new($class, $scfg, $storeid, $log_function);
}

# ---- what a backup-only storage does not do ------------------------------

sub activate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache, $hints) = @_;
    die "volume snapshots are not possible on backstop storage\n" if $snapname;
    return 1;
}

sub deactivate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache) = @_;
    die "volume snapshots are not possible on backstop storage\n" if $snapname;
    return 1;
}

sub volume_has_feature {
    my ($class, $scfg, $feature, $storeid, $volname, $snapname, $running) = @_;
    return undef;
}

sub _unsupported {
    my ($what) = @_;
    die "$what is not possible on backstop storage (it holds backups only)\n";
}

sub alloc_image { _unsupported('allocating images') }
sub clone_image { _unsupported('cloning images') }
sub create_base { _unsupported('creating base images') }
sub volume_resize { _unsupported('resizing volumes') }
sub volume_snapshot { _unsupported('volume snapshots') }
sub volume_snapshot_rollback { _unsupported('volume snapshot rollback') }
sub volume_snapshot_delete { _unsupported('volume snapshots') }
sub rename_volume { _unsupported('renaming volumes') }

1;
