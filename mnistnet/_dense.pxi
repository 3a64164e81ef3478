# The dense nets' SGD fast paths (included by _kernels.pyx after _epoch.pxi): a narrow first
# layer trained on a transposed copy of its weights, and two teams of their own that fuse
# plain SGD into their loops, the first layer split by output columns (columns team) and a
# one-layer net split by inputs (inputs team). Both run the step skeleton of every team
# (team_steps, _epoch.pxi); they apply to dense-only nets trained by SGD without L2
# (dense_fast_paths), and give the same bits as the rows team and as one thread.

# ---- a narrow first layer, transposed --------------------------------------------------------

# A first dense layer narrower than this, and not a whole number of 16-float vectors, trains
# on a transposed copy of its weights (dense nets trained by SGD): the row-major GEMMs
# vectorise along its outputs, mostly masked lanes here, the transposed ones along its inputs
# (the perceptron's 784x10 layer: forward 5.4 -> 3.1 us, gradient and update 8.7 -> 3.3 us a
# batch of 32).
cdef Py_ssize_t NARROW_WIDTH = 32


cdef inline bint dense_fast_paths(const Net* net) noexcept nogil:
    # The dense nets' special layouts and teams (transposed first layer, column and input
    # teams) fuse plain SGD into their own loops (without the weights' moving average).
    return (net.dense_only and net.opt.code == OPT_SGD and not net.has_l2
            and not net.opt.use_ema)


cdef inline bint trains_transposed(const Net* net) noexcept nogil:
    cdef Py_ssize_t H = width(net, 1)
    return dense_fast_paths(net) and H < NARROW_WIDTH and H % COLUMN_ALIGN != 0


cdef Net for_training(const Net* net) noexcept nogil:
    """net, with its first layer's weights and gradient copied transposed into the workspace
    when it trains that way (trains_transposed). end_training copies them back. Whatever
    w0t and g0t the caller's Net holds are ignored."""
    cdef Net t = net[0]
    cdef Py_ssize_t C0 = width(net, 0), H = width(net, 1)
    t.w0t = NULL
    t.g0t = NULL
    if trains_transposed(net):
        t.w0t = workspace(net)
        t.g0t = t.w0t + C0 * H
        transpose(t.w0t, net.params, C0, H)
        transpose(t.g0t, net.grads, C0, H)
    return t


cdef void end_training(const Net* t) noexcept nogil:
    cdef Py_ssize_t C0 = width(t, 0), H = width(t, 1)
    if t.w0t != NULL:
        transpose(t.params, t.w0t, H, C0)
        transpose(t.grads, t.g0t, H, C0)


cdef void transposed_first_layer_forward(const Net* net, float* out, float* scratch,
                                         const float* inp, Py_ssize_t n) noexcept nogil:
    """out = inp @ w0t^T + bias for the n rows inp: dot products along the inputs (see
    trains_transposed), over the two pieces of them (narrow_split) apart, then added. Two
    threads can then each take a piece (inputs_team_member) and get the same bits.
    scratch: room for n rows of the output."""
    cdef Py_ssize_t C = width(net, 0), H = width(net, 1), k = narrow_split(net)
    mn_sgemm_nt_strided(out, H, inp, C, net.w0t, C, n, k, H)
    mn_sgemm_nt_strided(scratch, H, inp + k, C, net.w0t + k, C, n, C - k, H)
    add_pieces(out, out, scratch, net.params + C * H, n, H)


cdef inline Py_ssize_t narrow_split(const Net* net) noexcept nogil:
    # Where the first piece of a narrow first layer's inputs ends: at a whole vector.
    cdef Py_ssize_t j0, j1
    column_block(width(net, 0), 0, 2, &j0, &j1)
    return j1


cdef inline void add_pieces(float* out, const float* first, const float* second,
                            const float* bias, Py_ssize_t n, Py_ssize_t H) noexcept nogil:
    cdef Py_ssize_t r, j
    for r in range(n):
        for j in range(H):
            out[r * H + j] = (first[r * H + j] + second[r * H + j]) + bias[j]


cdef bint transposed_first_layer_update(const Net* net, const Step* s, const float* dz,
                                        const float* inp, Py_ssize_t c0, Py_ssize_t c1,
                                        Py_ssize_t M) noexcept nogil:
    """Columns c0..c1 of the transposed first layer's gradient dz^T @ inp over the M rows,
    with its SGD step fused: each element is the same chain of multiply-adds over the batch
    rows as the row-major gradient's, so the same bits."""
    cdef Py_ssize_t K = width(net, 0), OC = width(net, 1)
    return mn_sgemm_sgd(net.g0t + c0, K, dz, 1, OC, inp + c0, K, net.w0t + c0, K,
                        s.learning_rate, OC, M, c1 - c0)


# ---- the columns team: the first layer split by output columns ---------------------------

cdef inline bint splits_first_layer(const Net* net, int threads) noexcept nogil:
    # Split the first layer by output columns when the workspace has room for the team, each
    # thread gets at least two vectors of columns, and the activation is elementwise (softmax
    # needs whole rows).
    return (dense_fast_paths(net) and threads <= net.team_threads and net.n_layers >= 2
            and net.plan[0].act != ACT_SOFTMAX
            and width(net, 1) >= 2 * COLUMN_ALIGN * threads)


cdef inline float* thread_area(const Net* net, int rank) noexcept nogil:
    # A dense net's thread rank >= 1: its input rows, then its params copy, then its grads
    # copy (after the first layer's two blocks).
    cdef Py_ssize_t C0 = width(net, 0), H = width(net, 1)
    return (workspace(net) + 2 * C0 * H
            + (rank - 1) * (net.rows * C0 + 2 * net.n_params))


cdef void copy_columns(float* dst, Py_ssize_t ld_dst, const float* src, Py_ssize_t ld_src,
                       Py_ssize_t rows, Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(dst + r * ld_dst, src + r * ld_src, width * sizeof(float))


cdef void first_layer_columns_forward(const Net* net, const float* inp, const float* w,
                                      Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """Columns j0..j1 of the first layer's output for the n rows inp, activation applied,
    from w: those columns of its weights as a contiguous (C0, j1 - j0) block."""
    cdef Py_ssize_t r, C = width(net, 0), H = width(net, 1), cols = j1 - j0
    cdef float* h = net_acts(net, 1) + j0
    mn_sgemm_strided(h, H, inp, C, 1, w, cols, net.params + C * H + j0, n, C, cols)
    for r in range(n):
        activation_forward(<int>net.plan[0].act, h + r * H, 1, cols)


cdef bint first_layer_columns_update(const Net* net, const float* inp, float* w, float* g,
                                     Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1,
                                     float learning_rate) noexcept nogil:
    """Gradient g and SGD update of w, the contiguous (C0, j1 - j0) copy of columns j0..j1 of
    the first layer's weights, and of those columns of its bias (in place), for the n input
    rows inp. Returns whether every updated value stayed finite."""
    cdef Py_ssize_t C = width(net, 0), H = width(net, 1), cols = j1 - j0
    cdef float* bias = net.params + C * H
    cdef float* dbias = net.grads + C * H
    cdef const float* dz = grad_region(net, 0)
    cdef bint finite = mn_sgemm_sgd(g, cols, inp, 1, C, dz + j0, H, w, cols, learning_rate,
                                    C, n, cols)
    mn_column_sums_block(dbias, dz, j0, j1, n, H)
    return finite & sgd_update(bias + j0, dbias + j0, learning_rate, cols)


cdef bint gather_batch(const Net* net, float* inp, const EpochArgs* args, Py_ssize_t start,
                       int rank, int size) noexcept nogil:
    """For the column team: all input rows of the batch starting at start into this
    thread's inp, its block of target rows into the shared targets, and a prefetch of the
    next batch's input rows. Returns whether the input rows are all finite."""
    cdef Py_ssize_t C0 = width(net, 0), OC = net.n_outputs, r0, r1
    cdef Py_ssize_t n = batch_rows(args, start)
    block_of(n, rank, size, &r0, &r1)
    cdef bint finite = gather_inputs(inp, args, args.perm + start, n, C0, 0, C0)
    gather_rows(net_acts(net, net.n_layers + 1) + r0 * OC, args.y, args.perm + start + r0,
                r1 - r0, OC)
    if start + n < args.N:
        prefetch_inputs_later(args, args.perm + start + n,
                              min(args.batch_size, args.N - start - n), C0, 0, C0)
    return finite


cdef struct ColumnsThread:
    # A member of the columns team: its own copies of what it works on.
    Net mine            # the net, with this thread's copies of the later layers' weights
    float* inp          # all the batch's input rows (it gathers them itself)
    float* w0           # its columns of the first layer's weights, contiguous (C0, cols)
    float* g0           # ... and of their gradient
    Py_ssize_t j0, j1   # those columns
    bint inputs_finite  # whether the rows it gathered last were finite


cdef void columns_forward(TeamThread* t, Py_ssize_t start, Py_ssize_t n,
                          const Step* s) noexcept nogil:
    """Its columns of the first layer for every row, then (barrier) the other layers forward
    and back for its block of rows."""
    cdef ColumnsThread* c = <ColumnsThread*>t.own
    cdef const Net* net = t.net
    cdef TeamBoard* board = t.board
    cdef Py_ssize_t L = net.n_layers, H = width(net, 1), OC = net.n_outputs, r0, r1, nr
    cdef float* targets = net_acts(net, L + 1)
    block_of(n, t.rank, t.size, &r0, &r1)
    nr = r1 - r0
    first_layer_columns_forward(net, c.inp, c.w0, n, c.j0, c.j1)
    board.loss[t.rank] = 0
    board.correct[t.rank] = 0
    mn_team_barrier()  # the whole first-layer output is there
    if nr > 0:
        forward_rows(&c.mine, s, 1, net_acts(net, 1) + r0 * H, net_acts(net, L) + r0 * OC,
                     r0, nr)
        board.loss[t.rank] = loss_forward(net.loss, net_acts(net, L) + r0 * OC,
                                          targets + r0 * OC, nr, OC) * nr
        board.correct[t.rank] = count_correct(net_acts(net, L) + r0 * OC, targets + r0 * OC,
                                              nr, OC)
        deltas_rows(&c.mine, s, targets, r0, r1, n, NULL)


cdef bint columns_totals(TeamThread* t, Py_ssize_t n, double* total,
                         Py_ssize_t* correct) noexcept nogil:
    # Every thread gathered every input row, so each knows itself whether they are finite
    # (a flag on the board could already hold the next batch's when another thread reads it).
    board_totals(t.board, t.size, total, correct)
    return (<ColumnsThread*>t.own).inputs_finite


cdef bint columns_update(TeamThread* t, Py_ssize_t n, const Step* s) noexcept nogil:
    # Its columns of the first layer, then the later layers whole (every thread alike).
    cdef ColumnsThread* c = <ColumnsThread*>t.own
    return (first_layer_columns_update(t.net, c.inp, c.w0, c.g0, n, c.j0, c.j1,
                                       s.learning_rate)
            & row_blocks_update(&c.mine, s, 1, 0, 1, n))


cdef void columns_after(TeamThread* t, Py_ssize_t next_start, Py_ssize_t end) noexcept nogil:
    # The next batch, gathered before the barrier that ends the step.
    cdef ColumnsThread* c = <ColumnsThread*>t.own
    if next_start < end:
        c.inputs_finite = gather_batch(t.net, c.inp, t.args, next_start, t.rank, t.size)


cdef TeamSteps COLUMNS_TEAM = TeamSteps(columns_forward, columns_totals, columns_update,
                                        columns_after)


cdef void columns_team_member(const Net* net, const EpochArgs* args, Py_ssize_t start,
                              Py_ssize_t end, TeamBoard* board, EpochResult* res,
                              double* last_check, Py_ssize_t* next_start) noexcept nogil:
    """One thread of a team running the batches starting at rows start.. < end, with the
    first layer split by output columns (splits_first_layer: dense nets trained by SGD).

    Moving data between cores is what costs here, so each thread keeps its own copies:
    - its columns of the first layer's weights and gradient, as contiguous blocks (a column
      block of a shared row-major matrix interleaves the threads' cache lines, and the
      prefetchers then pull each other's lines back and forth: the update ran 2.5x slower);
    - all the batch's input rows (it gathers them itself);
    - the other layers' weights, which every thread updates alike from the whole batch
      (thread 0 in place; the others in their areas of the workspace).
    What crosses between cores is the first layer's output and the deltas: each thread
    computes its columns of the first layer for all rows, then (barrier) the other layers
    forward and back for its block of rows, then (barrier) its updates, then gathers the next
    batch (barrier). Each element is computed by the same operations as on one thread, so
    the weights are the same bits."""
    cdef TeamThread t
    cdef ColumnsThread c
    cdef Py_ssize_t C0 = width(net, 0), H = width(net, 1), cols, upper
    team_thread(&t, net, args, board, <void*>&c)
    column_block(H, t.rank, t.size, &c.j0, &c.j1)
    cols = c.j1 - c.j0
    c.mine = net[0]
    c.inp = net.a
    c.w0 = workspace(net) + C0 * c.j0
    c.g0 = workspace(net) + C0 * H + C0 * c.j0
    copy_columns(c.w0, cols, net.params + c.j0, H, C0, cols)
    if t.rank > 0:
        c.inp = thread_area(net, t.rank)
        c.mine.params = c.inp + net.rows * C0
        c.mine.grads = c.mine.params + net.n_params
        upper = net.plan[1].param  # the first layer's weights are in w0
        memcpy(c.mine.params + upper, net.params + upper,
               (net.n_params - upper) * sizeof(float))
    c.inputs_finite = True
    mn_set_thread_cap(1)
    if start < end:
        c.inputs_finite = gather_batch(net, c.inp, args, start, t.rank, t.size)
    mn_team_barrier()  # every copy is made before thread 0 updates net.params
    run_team(&COLUMNS_TEAM, &t, start, end, res, last_check, next_start)
    # The weights of the last completed step (and its gradient) back into net.params.
    copy_columns(net.params + c.j0, H, c.w0, cols, C0, cols)
    copy_columns(net.grads + c.j0, H, c.g0, cols, C0, cols)


# ---- the inputs team: a one-layer net split by its inputs --------------------------------

cdef inline bint splits_inputs(const Net* net, int threads) noexcept nogil:
    # A one-layer net that trains transposed, with inputs wide enough for two pieces and a
    # workspace with room for the second thread's area (inputs_team_member's layout).
    cdef Py_ssize_t C0 = width(net, 0), OC = width(net, 1), rows = net.rows
    return (threads >= 2 and net.team_threads >= 2 and net.n_layers == 1
            and net.w0t != NULL and C0 >= 4 * COLUMN_ALIGN
            and rows * (C0 - narrow_split(net) + 5 * OC) + 2 * OC
                <= rows * C0 + 2 * net.n_params)


cdef struct InputsThread:
    # One of the two members of the inputs team: its piece of the inputs, and where its
    # copies of the small arrays are (thread 0's are the net's own).
    Py_ssize_t k0, k1       # its piece of the inputs
    float* inp              # its piece of the batch's input rows (rows, k1 - k0)
    float* sums0            # both pieces' partial sums (rows, OC) each: thread 0's ...
    float* sums1            # ... and thread 1's
    float* my_sums
    float* targets          # its own targets, outputs, deltas, bias and bias gradient
    float* out
    float* dz
    float* bias
    float* dbias
    bint own_bias           # thread 1 updates its copy of the bias


cdef void inputs_forward(TeamThread* t, Py_ssize_t start, Py_ssize_t n,
                         const Step* s) noexcept nogil:
    # Its piece of the inputs gathered (and the next batch's piece queued), and its piece's
    # dot products.
    cdef InputsThread* p = <InputsThread*>t.own
    cdef const Net* net = t.net
    cdef const EpochArgs* args = t.args
    cdef Py_ssize_t C0 = width(net, 0), OC = width(net, 1), cols = p.k1 - p.k0
    t.board.inputs_finite[t.rank] = gather_inputs(p.inp, args, args.perm + start, n, C0,
                                                  p.k0, p.k1)
    gather_rows(p.targets, args.y, args.perm + start, n, OC)
    if start + n < args.N:
        prefetch_inputs_later(args, args.perm + start + n,
                              min(args.batch_size, args.N - start - n), C0, p.k0, p.k1)
    mn_sgemm_nt_strided(p.my_sums, OC, p.inp, cols, net.w0t + p.k0, C0, n, cols, OC)


cdef bint inputs_totals(TeamThread* t, Py_ssize_t n, double* total,
                        Py_ssize_t* correct) noexcept nogil:
    # Both pieces added (as transposed_first_layer_forward does), by each thread for the
    # whole batch (a few hundred floats), and its loss.
    cdef InputsThread* p = <InputsThread*>t.own
    cdef const Net* net = t.net
    cdef Py_ssize_t OC = width(net, 1)
    add_pieces(p.out, p.sums0, p.sums1, p.bias, n, OC)
    activation_forward(<int>net.plan[0].act, p.out, n, OC)
    total[0] = loss_forward(net.loss, p.out, p.targets, n, OC) * n
    correct[0] = count_correct(p.out, p.targets, n, OC) if t.rank == 0 else 0
    return board_inputs_finite(t.board, 2)


cdef bint inputs_update(TeamThread* t, Py_ssize_t n, const Step* s) noexcept nogil:
    # The deltas, then the gradient and update of its own columns of w0t from its own rows,
    # and of its bias.
    cdef InputsThread* p = <InputsThread*>t.own
    cdef const Net* net = t.net
    cdef Py_ssize_t C0 = width(net, 0), OC = width(net, 1), cols = p.k1 - p.k0
    output_deltas(net, p.dz, p.out, p.targets, n, n)
    mn_column_sums(p.dbias, p.dz, n, OC)
    return (mn_sgemm_sgd(net.g0t + p.k0, C0, p.dz, 1, OC, p.inp, cols, net.w0t + p.k0, C0,
                         s.learning_rate, OC, n, cols)
            & sgd_update(p.bias, p.dbias, s.learning_rate, OC))


cdef TeamSteps INPUTS_TEAM = TeamSteps(inputs_forward, inputs_totals, inputs_update, NULL)


cdef void inputs_team_member(const Net* net, const EpochArgs* args, Py_ssize_t start,
                             Py_ssize_t end, TeamBoard* board, EpochResult* res,
                             double* last_check, Py_ssize_t* next_start) noexcept nogil:
    """One of the two threads of a team running the batches starting at rows start.. < end
    of a one-layer net that trains transposed (splits_inputs), each thread with one piece of
    the inputs (narrow_split), the perceptron's case.

    Each thread gathers only its piece of the batch's input rows (so every input byte crosses
    from memory to one core only), computes its piece's dot products, and after a barrier
    adds both pieces (as transposed_first_layer_forward does), then computes the loss and the
    deltas of the whole batch itself (a few hundred floats), and the gradient and update of
    its own columns of w0t from its own rows. The bias is updated by both, thread 0 in
    params, thread 1 in a copy. Only the pieces' sums cross between cores. The same bits as
    one thread."""
    cdef TeamThread t
    cdef InputsThread p
    cdef Py_ssize_t C0 = width(net, 0), OC = width(net, 1), rows = net.rows
    cdef Py_ssize_t split = narrow_split(net)
    # Thread 1's area: its inputs piece, both threads' piece sums, then its own targets,
    # outputs, deltas, bias and bias gradient.
    cdef float* area = thread_area(net, 1)
    team_thread(&t, net, args, board, <void*>&p)
    if t.size < 2:  # OpenMP gave one thread: the same steps, serially
        next_start[0] = serial_stretch(net, args, start, end, res, last_check)
        return
    p.k0 = 0 if t.rank == 0 else split
    p.k1 = split if t.rank == 0 else C0
    p.sums0 = area + rows * (C0 - split)
    p.sums1 = p.sums0 + rows * OC
    p.my_sums = p.sums0 if t.rank == 0 else p.sums1
    p.inp = net.a if t.rank == 0 else area
    p.targets = net_acts(net, 2) if t.rank == 0 else p.sums1 + rows * OC
    p.out = net_acts(net, 1) if t.rank == 0 else p.targets + rows * OC
    p.dz = grad_region(net, 0) if t.rank == 0 else p.out + rows * OC
    p.bias = net.params + C0 * OC if t.rank == 0 else p.dz + rows * OC
    p.dbias = net.grads + C0 * OC if t.rank == 0 else p.bias + OC
    if t.rank == 1:
        memcpy(p.bias, net.params + C0 * OC, OC * sizeof(float))
    run_team(&INPUTS_TEAM, &t, start, end, res, last_check, next_start)
