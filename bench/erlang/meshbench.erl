%% The Erlang/OTP side of mesh's comparison bench (mesh/benches/compare.rs).
%%
%% server/0 runs on node b: a registered `echo` process that sends every
%% message back, and a `sink` that counts messages until asked for the count.
%% client/1 runs on node a and measures, against node b over distribution:
%% sequential round trips (one sample per call, in nanoseconds, written to a
%% file) and one-way throughput (N casts, then a count request, which
%% arrives after them since messages between two processes keep their
%% order). local/1 spawns idle processes and reports spawn rate and memory.
%% Results are printed as `key value` lines for the Rust side to read.
-module(meshbench).
-export([server/0, client/1, local/1]).

server() ->
    register(echo, spawn(fun echo/0)),
    register(sink, spawn(fun() -> sink(0) end)),
    io:format("ready~n"),
    receive never -> ok end.

echo() ->
    receive
        {From, Bin} -> From ! {echoed, Bin}
    end,
    echo().

sink(N) ->
    receive
        {data, _Bin} -> sink(N + 1);
        {count, From} -> From ! {count, N}, sink(0)
    end.

%% [Node, Calls, Casts, SampleFile], as strings (erl -run).
client([NodeS, CallsS, CastsS, File]) ->
    Node = list_to_atom(NodeS),
    Calls = list_to_integer(CallsS),
    Casts = list_to_integer(CastsS),
    true = wait_connected(Node, 200),
    Bin = binary:copy(<<"x">>, 100),
    %% Warm-up: a tenth of the calls, not recorded.
    _ = [call(Node, Bin) || _ <- lists:seq(1, max(1, Calls div 10))],
    Samples = [call(Node, Bin) || _ <- lists:seq(1, Calls)],
    ok = file:write_file(File, [[integer_to_list(S), $\n] || S <- Samples]),
    Start = erlang:monotonic_time(nanosecond),
    cast_loop({sink, Node}, Bin, Casts),
    {sink, Node} ! {count, self()},
    Count = receive {count, C} -> C after 60000 -> -1 end,
    Elapsed = erlang:monotonic_time(nanosecond) - Start,
    io:format("cast_count ~p~ncast_ns ~p~n", [Count, Elapsed]),
    halt(0).

wait_connected(_Node, 0) -> false;
wait_connected(Node, Tries) ->
    case net_kernel:connect_node(Node) andalso
         rpc:call(Node, erlang, whereis, [echo]) =/= undefined of
        true -> true;
        false -> timer:sleep(50), wait_connected(Node, Tries - 1)
    end.

call(Node, Bin) ->
    T0 = erlang:monotonic_time(nanosecond),
    {echo, Node} ! {self(), Bin},
    receive {echoed, _} -> ok end,
    erlang:monotonic_time(nanosecond) - T0.

cast_loop(_To, _Bin, 0) -> ok;
cast_loop(To, Bin, N) -> To ! {data, Bin}, cast_loop(To, Bin, N - 1).

%% [N] (a string): spawns N processes that wait for a message, reports the time it
%% took and the memory they hold (the VM's count and the OS's).
local([NS]) ->
    N = list_to_integer(NS),
    erlang:garbage_collect(),
    Mem0 = erlang:memory(processes),
    Rss0 = rss(),
    T0 = erlang:monotonic_time(nanosecond),
    Pids = [spawn(fun idle/0) || _ <- lists:seq(1, N)],
    Elapsed = erlang:monotonic_time(nanosecond) - T0,
    Mem1 = erlang:memory(processes),
    Rss1 = rss(),
    io:format("spawn_ns ~p~nvm_bytes ~p~nrss_bytes ~p~n",
              [Elapsed, Mem1 - Mem0, Rss1 - Rss0]),
    [P ! stop || P <- Pids],
    halt(0).

idle() -> receive stop -> ok end.

rss() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    [Line] = [L || L <- binary:split(Status, <<"\n">>, [global]),
                   binary:part(L, 0, min(6, byte_size(L))) =:= <<"VmRSS:">>],
    [_, Kb | _] = binary:split(Line, [<<" ">>, <<"\t">>], [global, trim_all]),
    binary_to_integer(Kb) * 1024.
